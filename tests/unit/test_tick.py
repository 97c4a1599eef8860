"""tick.py's pure rule: how due EPNs are shared out over batch runs."""

from assyncy_dagster.tick import plan_batches


def test_batches_give_every_rsync_slot_work_and_stay_bounded():
    epns = [f"{12000 + i}a" for i in range(7)]
    assert plan_batches(epns, max_tasks=2, per_run=20) == [epns[:4], epns[4:]]
    assert plan_batches(epns, max_tasks=2, per_run=3) == [epns[:3], epns[3:6], epns[6:]]
    assert plan_batches(epns[:1], max_tasks=4, per_run=20) == [epns[:1]]
    assert plan_batches([], max_tasks=2, per_run=20) == []


def test_an_epn_claimed_by_a_run_ended_from_outside_is_not_due_while_that_step_still_beats(tmp_path):
    """A run the sweep ended (its Celery worker went silent) may still be writing its EPN: the sensor
    does not ask for a retry that would only find the EPN claimed, until that heartbeat stops."""
    import time

    import dagster as dg

    from assyncy_dagster.claims import HEARTBEAT_LIMIT_SECONDS, HEARTBEAT_PREFIX, WORKER_TAG, claim_epn
    from assyncy_dagster.outcomes import Outcome
    from assyncy_dagster.run_records import InFlight, outcome_tags
    from assyncy_dagster.tick import repatriation_history
    from tests.support.helpers import add_started_run

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        run_id = add_started_run(
            instance, **{WORKER_TAG: "mover1:4242:99:1"}, **outcome_tags(["12282a"], Outcome.RUNNING)
        )
        assert claim_epn(instance, "12282a", run_id) is None
        instance.report_run_failed(instance.get_run_by_id(run_id))
        nobody = InFlight({}, [])

        instance.run_storage.set_cursor_values({HEARTBEAT_PREFIX + run_id: f"{time.time() - 12:.3f}"})
        history = repatriation_history(instance, ["12282a"], nobody)
        assert history["12282a"].status.in_flight and history["12282a"].run_id == run_id

        instance.run_storage.set_cursor_values(
            {HEARTBEAT_PREFIX + run_id: f"{time.time() - HEARTBEAT_LIMIT_SECONDS - 1:.3f}"}
        )
        assert repatriation_history(instance, ["12282a"], nobody)["12282a"].status is Outcome.FAILED
