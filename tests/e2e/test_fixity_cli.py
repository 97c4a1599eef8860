"""The fixity audit on demand from the CLI, as the README says to run it: `dagster job execute`
finds a bit flipped at home (exit status non-zero, the partition's check failed in the instance),
`dagster asset materialize` of the partition repairs it, and the next audit exits 0."""

import dagster as dg
import pytest

from tests.integration.test_fixity import INTACT, flip_a_bit
from tests.support.helpers import command, materialize_argv

AUDIT = ("dagster", "job", "execute", "-m", "assyncy_dagster.definitions", "-j", "fixity_audit")

pytestmark = pytest.mark.slow


def latest_intact_at_home(instance: dg.DagsterInstance, epn: str) -> bool:
    records = instance.event_log_storage.get_asset_check_execution_history(INTACT, limit=20)
    for record in records:
        if isinstance(record.evaluation, dg.AssetCheckEvaluation) and record.evaluation.partition == epn:
            return record.evaluation.passed
    raise AssertionError(f"no intact_at_home result for {epn}")


def test_dagster_job_execute_finds_a_flipped_bit_and_a_materialize_repairs_it(stack):
    stack.lay_out("12282a")
    assert stack.materialize("12282a").success
    flip_a_bit(stack.destination("ny79", "12282a") / "frames" / "img_0003.cbf")

    found = command(*AUDIT)
    assert found.returncode != 0
    assert "12282a" in found.stdout + found.stderr
    assert latest_intact_at_home(stack.instance, "12282a") is False

    repaired = command(*materialize_argv("12282a"))
    assert repaired.returncode == 0, repaired.stderr[-3000:]
    again = command(*AUDIT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert latest_intact_at_home(stack.instance, "12282a") is True


def test_assyncy_fixity_audit_names_each_epn_and_exits_1_on_damage(stack):
    stack.lay_out("12282a", "13001a")
    for epn in ("12282a", "13001a"):
        assert stack.materialize(epn).success
    flip_a_bit(stack.destination("ny79", "12282a") / "frames" / "img_0002.cbf")

    found = command("assyncy", "fixity-audit")
    assert found.returncode == 1, found.stderr[-3000:]
    lines = found.stdout.splitlines()
    assert "12282a: damaged: 1 corrupt at home; 4 file(s) verified by content (xxh128), 0 by size only" in lines
    assert any(line.startswith("13001a: intact: ") for line in lines), lines
    assert "12282a" in found.stderr and "backfill" in found.stderr
    assert latest_intact_at_home(stack.instance, "12282a") is False  # the UI shows the run and its results

    only = command("assyncy", "fixity-audit", "13001a")
    assert only.returncode == 0, only.stderr[-3000:]
    assert [line.split(":")[0] for line in only.stdout.splitlines()[:-1]] == ["13001a"]
    assert only.stdout.splitlines()[-1].startswith("fixity audit: nothing damaged (run ")
