"""A repatriation launched from the CLI that fails is e-mailed, once, by the daemon's
repatriation_failure_alert, as one launched by the sensor or the UI is (issue 18 item 8)."""

import subprocess

import dagster as dg
import pytest
from dagster._core.scheduler.instigation import InstigatorType  # no public home for the instigator kind

from assyncy_dagster_demo.testing.stack import far_from_the_digest
from tests.support.helpers import dagster_daemon, materialize_argv, wait_for

pytestmark = pytest.mark.slow


def failure_sensor_ticks(instance: dg.DagsterInstance) -> int:
    """How many times the daemon has evaluated repatriation_failure_alert."""
    states = instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
    return sum(
        len(instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=100))
        for state in states
        if state.name == "repatriation_failure_alert"
    )


def test_a_failed_cli_run_is_emailed_once(stack, tmp_path):
    stack.configure(**{"timezone": far_from_the_digest()})
    # 13001b's visit is still running: the sensor holds it back, and `dagster asset materialize`
    # refuses it, so the CLI's run is the only one that fails for it.
    stack.lay_out("13001b")
    stack.instance.add_dynamic_partitions("epn", ["13001b"])
    with dagster_daemon(tmp_path) as (daemon, log):
        # A run-failure sensor starts from the newest run event at its first tick: a run that
        # failed before it would be e-mailed by nobody, so the CLI runs once it is watching.
        wait_for(
            lambda: failure_sensor_ticks(stack.instance), 120, "the failure sensor's first tick", proc=daemon, log=log
        )
        cli = subprocess.run(materialize_argv("13001b"), capture_output=True, text=True, timeout=240)
        assert cli.returncode != 0, cli.stdout[-2000:]

        def about_13001b() -> list:
            return [m for m in stack.smtp.messages if "13001b" in (m["Subject"] or "")]

        wait_for(lambda: about_13001b(), 150, "the failure e-mail for the CLI's run", proc=daemon, log=log)
        [message] = about_13001b()
        body = message.get_body(("plain",)).get_content()
        assert "still running" in body, body
        ticks = failure_sensor_ticks(stack.instance)
        wait_for(lambda: failure_sensor_ticks(stack.instance) > ticks, 90, "one more evaluation", proc=daemon, log=log)
        assert len(about_13001b()) == 1
