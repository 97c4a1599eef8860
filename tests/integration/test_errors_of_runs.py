"""Why a failed run failed for one EPN (errors_of_runs.epn_last_error), read from a Dagster
instance in a temporary folder: one answer for the digest's stuck section and the report."""

import socket
import subprocess
from datetime import timedelta

import dagster as dg

from assyncy_dagster.assets.report import last_attempt
from assyncy_dagster.canary import REQUESTED, record_due, stuck_report
from assyncy_dagster.claims import WORKER_TAG, _pid_namespace
from assyncy_dagster.config import Settings
from assyncy_dagster.errors_of_runs import epn_last_error
from assyncy_dagster.names import REPATRIATION_JOB
from assyncy_dagster.outcomes import Outcome
from assyncy_dagster.run_records import end_lost_runs, in_flight, outcome_tags
from tests.support.helpers import NOW


def canary_settings() -> Settings:
    """Just the settings the stuck-EPN canary reads (built, not loaded from a file)."""
    return Settings.model_construct(equipment=[], smtp_password="s3cret-smtp", stuck_after_hours=24, timezone="UTC")


@dg.op
def noop():
    pass


@dg.job(name=REPATRIATION_JOB)
def repatriation():
    noop()


@dg.op
def batch_with_one_failure():
    raise dg.Failure(
        description="1 of 2 EPN(s) failed; the others are home.\nEPN 12282b: rsync exit 23",
        metadata={"errors": dg.MetadataValue.json({"12282b": "EPN 12282b: rsync exit 23"})},
    )


@dg.job(name=REPATRIATION_JOB)
def failing_batch():
    batch_with_one_failure()


def test_the_digest_and_the_report_give_a_lost_runs_epn_the_same_error():
    proc = subprocess.Popen(["true"])
    proc.wait()
    dead = f"{socket.gethostname()}:{proc.pid}:0:{_pid_namespace()}"  # a worker process that is gone
    with dg.instance_for_test() as instance:
        run = instance.create_run_for_job(
            job_def=repatriation,
            tags={WORKER_TAG: dead, **outcome_tags(["12282a"], Outcome.RUNNING)},
            status=dg.DagsterRunStatus.STARTED,
        )
        why = end_lost_runs(instance, in_flight(instance, REPATRIATION_JOB, []), stale_after_hours=24)[run.run_id]
        record_due(instance, {"12282a": REQUESTED}, NOW - timedelta(hours=30))

        [entry] = stuck_report(instance, canary_settings(), NOW)
        attempt, run_id, report_error = last_attempt(instance, "12282a")

    assert (attempt, run_id) == (Outcome.FAILED, run.run_id)
    assert report_error == f"run ended as failed: {why}"
    assert entry.reason == f"failing: 1 run(s) failed in a row; last error: {report_error}"


def test_an_epn_of_a_failed_batch_gets_its_own_error_and_not_the_others():
    with dg.instance_for_test() as instance:
        result = failing_batch.execute_in_process(instance=instance, raise_on_error=False)

        own = epn_last_error(instance, result.run_id, "12282b")
        other = epn_last_error(instance, result.run_id, "12282a")

    assert own == "EPN 12282b: rsync exit 23"
    assert "12282b" not in other and other  # it went down with the run: the run's failure, not 12282b's


def test_a_run_that_left_no_error_points_at_its_log():
    with dg.instance_for_test() as instance:
        run = instance.create_run_for_job(job_def=repatriation, status=dg.DagsterRunStatus.FAILURE)

        assert epn_last_error(instance, run.run_id, "12282a") == f"run {run.run_id} failed (its log holds the error)"
