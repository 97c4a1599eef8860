"""repatriation_failure_alert: e-mails the helpdesk when bringing an EPN home fails."""

import dagster as dg

from ..alerts.failure import render_failure_alert
from ..assets.visits import PORTAL_VISITS
from ..mail import build_message
from ..names import REPATRIATION_JOB
from ..outcomes import Outcome
from ..resources.settings import AssyncyConfigResource
from ..resources.smtp import SmtpResource
from ..run_records import EPN_DATA, LOST_TAG, home_since_requested, step_failure_message, tagged_epns

_REPATRIATION_ASSETS = {EPN_DATA, PORTAL_VISITS}


def is_repatriation(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    """A run of the sensor's job, or any run (UI, CLI, mxsync) that planned to
    materialise an EPN's data."""
    if run.job_name == REPATRIATION_JOB or set(run.asset_selection or ()) & _REPATRIATION_ASSETS:
        return True
    planned = instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, limit=10
    ).records
    return any(
        r.event_log_entry.dagster_event and r.event_log_entry.dagster_event.asset_key in _REPATRIATION_ASSETS
        for r in planned
    )


@dg.run_failure_sensor(
    name="repatriation_failure_alert",
    default_status=dg.DefaultSensorStatus.RUNNING,
    # A run-failure sensor watches its own code location's runs only, and a run that
    # `dagster asset materialize -m ...` starts belongs to none: every run is looked at,
    # and is_repatriation keeps those that meant to bring an EPN home, whoever started them.
    monitor_all_code_locations=True,
    description="E-mails epnalert-email-to when a repatriation run fails.",
)
def repatriation_failure_alert(
    context: dg.RunFailureSensorContext, smtp: SmtpResource, assyncy_config: AssyncyConfigResource
) -> None:
    run = context.dagster_run
    if not is_repatriation(context.instance, run):
        return
    # Once per run: a run the sweep ended (its worker stopped or cut off) fails a second time when
    # its step, resumed, ends; that second failure says nothing new.
    first = context.instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE, limit=1)
    if first.records and first.records[0].event_log_entry.dagster_event != context.failure_event:
        context.log.info(f"run {run.run_id} failed again (its step ended after the run): e-mailed at its first failure")
        return
    settings = assyncy_config.settings()
    unfinished = [
        epn
        for epn, outcome in tagged_epns(run.tags).items()
        if outcome not in (Outcome.HOME.value, Outcome.DRY_RUN.value)
    ]
    if LOST_TAG in run.tags:  # ended by the sweep: an EPN another run has since brought home is no failure
        left = [e for e in unfinished if home_since_requested(context.instance, e, run.run_id) is None]
        if unfinished and not left:
            context.log.info(f"run {run.run_id} ended as lost, but other runs have brought its EPNs home: no e-mail")
            return
        unfinished = left
    epn = ", ".join(unfinished) or run.tags.get("dagster/partition", "(unknown EPN)")
    url = f"{settings.dagster_ui_url.rstrip('/')}/runs/{run.run_id}" if settings.dagster_ui_url else None
    error = step_failure_message(context.get_step_failure_events()) or context.failure_event.message
    rendered = render_failure_alert(
        epn, error or "the run failed", run.run_id, url, template_folder=settings.epnalert_template_folder
    )
    smtp.send(build_message(rendered, settings.epnalert_email_from, settings.epnalert_email_to))
    context.log.info(f"failure alert for EPN {epn} (run {run.run_id}) sent to {settings.epnalert_email_to}")
