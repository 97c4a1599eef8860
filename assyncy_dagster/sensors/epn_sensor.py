"""epn_sensor: watches the portal and the SFTP host for EPNs to bring home.

The sensor is the wiring: its interval, its cursor, its resources and its log
line. What a tick gathers and decides is in tick.py (shared with mxsync and the
demo), the facts it gathers in facts.py.
"""

import logging
import os

import dagster as dg

from ..config import ConfigError, Settings
from ..facts import SensorCursor
from ..jobs import repatriation_job, unknown_epn_alert_job
from ..logs import LogSetupError, configure_logging
from ..names import INTERVAL_ENV
from ..planning import CyclePlan
from ..resources.portal import PortalResource
from ..resources.settings import AssyncyConfigResource
from ..resources.ssh_source import SshSourceResource
from ..run_configs import alert_epns, batch_epns
from ..state import StateFileError
from ..tick import held_text, plan_tick

# The sensor looks every 30 s: between refreshes it decides from what it last
# learned (visit end times, the host's folders, run outcomes), which costs no
# portal request, so a visit that ends or a retry that falls due is acted on
# within a tick.
TICK_SECONDS = 30


def sensor_interval_seconds(settings: Settings) -> int:
    """How often epn_sensor evaluates: TICK_SECONDS, or $ASSYNCY_SENSOR_INTERVAL_SECONDS (demo, tests).

    The portal is still refreshed only every `sync-frequency-hours` (see SensorCursor)."""
    override = os.environ.get(INTERVAL_ENV)
    if override:
        try:
            return max(1, int(override))
        except ValueError:
            raise ConfigError(INTERVAL_ENV, [f"{INTERVAL_ENV}={override!r}: expected whole seconds"]) from None
    return min(TICK_SECONDS, settings.sync_interval_seconds)


def build_epn_sensor(interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="epn_sensor",
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        jobs=[repatriation_job, unknown_epn_alert_job],
    )
    def epn_sensor(
        context: dg.SensorEvaluationContext,
        portal: PortalResource,
        sftp: SshSourceResource,
        assyncy_config: AssyncyConfigResource,
    ) -> dg.SensorResult | dg.SkipReason:
        """Every 30 s: end runs whose worker died; refresh from the portal and the SFTP host
        when due (every sync-frequency-hours, and 1, 2, 4 ... minutes after a failure);
        add each new EPN as a partition; request batch runs for the mapped EPNs whose
        visit has ended and whose data is not home yet; request one alert run for new
        unmapped EPNs."""
        # config.yml and the state files are read afresh at every tick: one an admin broke skips the
        # tick with a reason naming the file and the problem (the UI shows it), until it is repaired.
        try:
            settings = assyncy_config.settings()
        except ConfigError as exc:
            return _skip(context, f"config.yml ({exc.path}) cannot be used, nothing done: {'; '.join(exc.problems)}")
        cursor = SensorCursor.parse(context.cursor)
        try:
            plan, result = plan_tick(context.instance, settings, portal, sftp, context.log, cursor)
        except StateFileError as exc:  # the message names the file (ignore.yml, alerted.yml) and the problem
            return _skip(context, f"a state file cannot be read, nothing done: {exc}")
        _log_to_sync_file(settings, result, plan)
        if isinstance(result, dg.SkipReason):
            context.update_cursor(cursor.dumps())
            return result
        return dg.SensorResult(
            run_requests=result.run_requests,
            dynamic_partitions_requests=result.dynamic_partitions_requests,
            cursor=cursor.dumps(),
        )

    return epn_sensor


def _skip(context: dg.SensorEvaluationContext, reason: str) -> dg.SkipReason:
    context.log.error(f"epn_sensor: {reason}")
    return dg.SkipReason(reason)


_configured_logging: tuple | None = None


def _log_to_sync_file(settings: Settings, result: dg.SensorResult | dg.SkipReason, plan: CyclePlan | None) -> None:
    """Put each tick's outcome in `log-files.sync` too, where mxsync's cycles went.

    Dagster keeps sensor logs with the tick; the admin's log file is set up once
    per process, again only when log-level, log-files or the secrets change."""
    global _configured_logging
    wanted = (settings.log_level, settings.log_files, tuple(settings.secrets()))
    if _configured_logging != wanted:
        try:
            configure_logging(settings, "sync", console=False)
        except LogSetupError as exc:
            raise dg.Failure(description=str(exc)) from None
        _configured_logging = wanted
    log = logging.getLogger("assyncy.sync")
    if isinstance(result, dg.SkipReason):
        log.info(f"epn_sensor: {result.skip_message}")
    else:
        requests = result.run_requests or []
        runs = "; ".join(_describe_request(r) for r in requests) or "none"
        summary = f"{plan.summary()}{held_text(plan.held_back)}; " if plan else ""
        log.info(f"epn_sensor: {summary}requested {len(requests)} run(s): {runs}")


def _describe_request(request: dg.RunRequest) -> str:
    epns = batch_epns(request.run_config) or alert_epns(request.run_config)
    return f"{request.job_name} {', '.join(epns)}".strip()
