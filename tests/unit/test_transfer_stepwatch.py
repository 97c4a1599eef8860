"""The stopped-step limit sits inside the heartbeat limit, with the grace on top (transfer/stepwatch.py)."""

from assyncy_dagster.claims import HEARTBEAT_LIMIT_SECONDS
from assyncy_dagster.transfer.process import TERMINATE_GRACE_SECONDS
from assyncy_dagster.transfer.stepwatch import STOPPED_STEP_LIMIT_SECONDS


def test_a_stopped_steps_rsync_is_gone_before_its_run_can_be_judged_gone():
    # The watch polls every POLL_SECONDS (a quarter second) on top; a second of margin covers it.
    assert STOPPED_STEP_LIMIT_SECONDS + TERMINATE_GRACE_SECONDS + 1 < HEARTBEAT_LIMIT_SECONDS
