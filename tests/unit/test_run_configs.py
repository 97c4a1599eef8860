"""The one spelling of a batch's (and an alert's) EPNs in run config, and the ops it names."""

from __future__ import annotations

import dagster as dg

from assyncy_dagster.jobs import repatriation_job, unknown_epn_alert_job
from assyncy_dagster.names import ALERT_OP, REPATRIATION_OP
from assyncy_dagster.run_configs import alert_epns, alert_run_config, batch_epns, batch_options, batch_run_config


def test_a_batch_reads_back_the_epns_it_was_written_with():
    assert batch_epns(batch_run_config(["12282a", "12282b"])) == ["12282a", "12282b"]
    assert batch_epns(batch_run_config(("13001a",), execute=False)) == ["13001a"]


def test_execute_is_set_only_when_chosen():
    assert batch_run_config(["12282a"]) == {"ops": {REPATRIATION_OP: {"config": {"epns": ["12282a"]}}}}
    assert batch_run_config(["12282a"], execute=True) == {
        "ops": {REPATRIATION_OP: {"config": {"epns": ["12282a"], "execute": True}}}
    }


def test_batches_with_equal_options_differ_only_in_their_epns():
    # A batch run that is done takes EPNs only from waiting runs with its own options (repatriation.py).
    assert batch_options(batch_run_config(["12282a"], execute=True)) == {"execute": True}
    assert batch_options(batch_run_config(["13001a", "13001b"], execute=True)) == {"execute": True}
    assert batch_options(batch_run_config(["12282a"], execute=False)) != {"execute": True}
    assert batch_options(None) == {} == batch_options(alert_run_config(["14500a"]))


def test_a_run_that_names_no_batch_has_no_epns():
    assert batch_epns(None) == [] and batch_epns({}) == []
    assert batch_epns(alert_run_config(["14500a"])) == []
    assert alert_epns(alert_run_config(["14500a"])) == ["14500a"]
    assert alert_epns(batch_run_config(["12282a"])) == []


def test_the_names_are_the_ops_of_the_jobs():
    assert [node.name for node in repatriation_job.nodes] == [REPATRIATION_OP]
    assert [node.name for node in unknown_epn_alert_job.nodes] == [ALERT_OP]


def test_the_jobs_accept_the_run_configs():
    for job, run_config in (
        (repatriation_job, batch_run_config(["12282a"], execute=False)),
        (unknown_epn_alert_job, alert_run_config(["14500a"])),
    ):
        assert dg.validate_run_config(job, run_config)
