"""A run records an EPN only while it holds the EPN's claim (assets/bring_home.still_claimed): a step
resumed after its run was ended elsewhere, its EPN taken over, records nothing. On a real instance on
disk (SQLite in a temporary DAGSTER_HOME)."""

import uuid

import dagster as dg
import pytest

from assyncy_dagster.assets.bring_home import EpnFailed, still_claimed
from assyncy_dagster.claims import claim_epn, forget_run


def test_only_the_claim_holder_may_record_the_epn(tmp_path):
    mine, other = str(uuid.uuid4()), str(uuid.uuid4())
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        assert claim_epn(instance, "12282a", mine) is None
        still_claimed(instance, "12282a", mine)  # holds it: may record
        forget_run(instance, mine, ["12282a"])  # the sweep ended the run and freed its claim
        with pytest.raises(EpnFailed, match="not recorded: this run lost its claim on it \\(it was freed\\)"):
            still_claimed(instance, "12282a", mine)
        assert claim_epn(instance, "12282a", other) is None  # another run took it
        with pytest.raises(EpnFailed, match=f"run {other} holds it now"):
            still_claimed(instance, "12282a", mine)
