"""Why a failed run failed for one EPN: the one answer the digest (canary.py) and the report
(assets/report.py) both give, each then shortened its own way."""

from __future__ import annotations

import dagster as dg

from .run_records import LOST_TAG


def epn_last_error(instance: dg.DagsterInstance, run_id: str, epn: str) -> str:
    """The error run `run_id` gave for `epn`, the first that applies:

    1. the EPN's own entry in a batch step's failure (its `errors` metadata); a failure whose
       `errors` name only other EPNs is passed over: this one went down with the run;
    2. a step's failure that names no EPN (a Failure's description, else the exception);
    3. why the sweep ended the run (its worker lost: stopped heartbeat, dead process, stale run);
    4. the run's failure message;
    5. a pointer to the run's log.
    """
    records = instance.get_records_for_run(
        run_id, of_type={dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE}
    ).records
    step_error = run_message = None
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        if event.is_step_failure:
            data = event.step_failure_data
            failure = data.user_failure_data if data else None
            errors = getattr(failure.metadata.get("errors"), "value", None) if failure else None
            if isinstance(errors, dict):
                if epn in errors:
                    return str(errors[epn])
                continue
            if step_error is None:
                if failure is not None and failure.description:
                    step_error = failure.description
                elif data is not None and data.error:
                    step_error = data.error.message.strip()
        elif run_message is None:
            run_message = event.message or record.event_log_entry.message
    if step_error:
        return step_error
    run = instance.get_run_by_id(run_id)
    if run is not None and LOST_TAG in run.tags:
        return f"run ended as failed: {run.tags[LOST_TAG]}"
    return run_message or f"run {run_id} failed (its log holds the error)"
