"""When the repatriation report is rebuilt: after repatriation runs end, and daily.

`repatriation_report_refresh` watches for repatriation runs that ended
(succeeded, failed or were cancelled), whoever launched them: epn_sensor's
batches, a UI backfill, `dagster asset materialize`; and for fixity audits
that ended (what they found shows as `corrupt`). Each tick that finds
some asks for one report run covering them all, unless a report run is
already waiting to start (it will see them too), so a burst of runs never
piles up report runs. The daily schedule (`jobs.build_report_schedule`) catches
what no run changes: visits that end, EPNs that become stuck, data removed from
the destination.
"""

import time
from datetime import UTC, datetime

import dagster as dg

from ..jobs import repatriation_report_job
from ..names import FIXITY_JOB, REPORT_JOB
from .failure_alerts import is_repatriation

REFRESH_SECONDS = 60
ENDED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
NOT_STARTED = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING]


def ended_repatriations(instance: dg.DagsterInstance, after: float) -> list[dg.RunRecord]:
    """Repatriation runs (the batch job, or any run that planned to materialise an EPN) and fixity audits
    that ended after `after`."""
    records = instance.get_run_records(dg.RunsFilter(statuses=ENDED, updated_after=datetime.fromtimestamp(after, UTC)))
    return [
        r
        for r in records
        if r.end_time
        and r.end_time > after
        and (r.dagster_run.job_name == FIXITY_JOB or is_repatriation(instance, r.dagster_run))
    ]


@dg.sensor(
    name="repatriation_report_refresh",
    job=repatriation_report_job,
    minimum_interval_seconds=REFRESH_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def repatriation_report_refresh(context: dg.SensorEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    """Rebuild the repatriation report after repatriation runs end (one report run per tick at most,
    none while one is still waiting to start)."""
    if context.cursor is None:
        context.update_cursor(str(time.time()))
        return dg.SkipReason("watching for repatriation runs that end from now on")
    after = float(context.cursor)
    ended = ended_repatriations(context.instance, after)
    if not ended:
        return dg.SkipReason("no repatriation run has ended since the last report request")
    newest = max(ended, key=lambda r: r.end_time or 0.0)  # ended runs all have an end_time
    context.update_cursor(str(newest.end_time))
    waiting = context.instance.get_run_records(dg.RunsFilter(job_name=REPORT_JOB, statuses=NOT_STARTED), limit=1)
    if waiting:
        return dg.SkipReason(
            f"{len(ended)} repatriation run(s) ended; report run {waiting[0].dagster_run.run_id} "
            "has not started yet and will include them"
        )
    return dg.RunRequest(
        # One report per newest ended run: a re-evaluated tick cannot ask twice.
        run_key=f"report-after:{newest.dagster_run.run_id}",
        tags={"assyncy/after_runs": str(len(ended))},
    )
