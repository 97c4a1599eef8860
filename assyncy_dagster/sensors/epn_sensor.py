"""epn_sensor: watches the portal and the SFTP host for EPNs to bring home."""

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone

import dagster as dg

from ..config import ConfigError, Settings
from ..jobs import (
    ALERT_JOB,
    KIND_TAG,
    REPATRIATION_JOB,
    UnknownEpnAlertConfig,
    repatriation_job,
    unknown_epn_alert_job,
)
from ..logs import LogSetupError, configure_logging
from ..partitions import EPN_PARTITIONS_NAME, epn_partitions
from ..planning import CyclePlan, LastRun, RunHistory, plan_cycle
from ..portal import PortalError, visit_window
from ..resources.portal import PortalResource
from ..resources.settings import AssyncyConfigResource
from ..resources.sftp import SftpResource
from ..rsync import RsyncError
from ..state import ALERTED_KEY, StateFileError, read_epns

INTERVAL_ENV = "ASSYNCY_SENSOR_INTERVAL_SECONDS"
RSYNC_POOL = "rsync"
INTERRUPTED_TAG = "assyncy/interrupted"
_IN_FLIGHT = {
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
}
_FAILED = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def sensor_interval_seconds(settings: Settings) -> int:
    """`sync-frequency-hours`, unless $ASSYNCY_SENSOR_INTERVAL_SECONDS asks for less (demo, tests)."""
    override = os.environ.get(INTERVAL_ENV)
    if override:
        try:
            return max(1, int(override))
        except ValueError:
            raise ConfigError(INTERVAL_ENV, [f"{INTERVAL_ENV}={override!r}: expected whole seconds"]) from None
    return settings.sync_interval_seconds


def sync_pool_limit(instance: dg.DagsterInstance, max_tasks: int) -> None:
    """Make the `rsync` pool allow `max-tasks` transfers at once, as the old tool's threads did."""
    storage = instance.event_log_storage
    if storage.get_concurrency_info(RSYNC_POOL).slot_count != max_tasks:
        storage.set_concurrency_slots(RSYNC_POOL, max_tasks)


def repatriation_history(instance: dg.DagsterInstance, candidates: Iterable[str]) -> dict[str, RunHistory]:
    """The latest repatriation run of each EPN, and its run of failures when it failed."""
    candidates = set(candidates)
    latest = instance.get_run_partition_data(dg.RunsFilter(job_name=REPATRIATION_JOB))
    history: dict[str, RunHistory] = {}
    for data in latest:
        if data.partition not in candidates:
            continue
        if data.status in _IN_FLIGHT:
            history[data.partition] = RunHistory(LastRun.IN_FLIGHT, data.run_id)
        elif data.status in _FAILED:
            history[data.partition] = _failure_history(instance, data.partition)
        else:
            history[data.partition] = RunHistory(LastRun.SUCCEEDED, data.run_id)
    return history


def _failure_history(instance: dg.DagsterInstance, epn: str) -> RunHistory:
    records = instance.get_run_records(
        dg.RunsFilter(job_name=REPATRIATION_JOB, tags={"dagster/partition": epn}), limit=20
    )
    failures = 0
    for record in records:
        if record.dagster_run.status not in _FAILED:
            break
        if INTERRUPTED_TAG in record.dagster_run.tags:
            continue  # stopped by a shutdown (mxsync's SIGTERM): not the EPN's failure
        failures += 1
    last = records[0]
    ended = last.end_time
    ended_at = datetime.fromtimestamp(ended, timezone.utc) if ended else None
    if INTERRUPTED_TAG in last.dagster_run.tags:
        failures = 0  # retry at once after a shutdown
    return RunHistory(LastRun.FAILED, last.dagster_run.run_id, ended_at, failures)


def alert_state(instance: dg.DagsterInstance) -> tuple[set[str], str]:
    """EPNs in alert runs still queued or running, and the id of the last failed alert run."""
    in_flight: set[str] = set()
    for run in instance.get_runs(dg.RunsFilter(job_name=ALERT_JOB, statuses=list(_IN_FLIGHT))):
        ops = (run.run_config or {}).get("ops", {})
        in_flight.update(ops.get("send_unknown_epn_alert_op", {}).get("config", {}).get("epns", []))
    failed = instance.get_runs(dg.RunsFilter(job_name=ALERT_JOB, statuses=list(_FAILED)), limit=1)
    return in_flight, failed[0].run_id if failed else "none"


def _digest(items: Iterable[str]) -> str:
    return hashlib.sha256(",".join(sorted(items)).encode()).hexdigest()[:16]


def plan_tick(
    instance: dg.DagsterInstance,
    settings: Settings,
    portal: PortalResource,
    sftp: SftpResource,
    log,
) -> tuple[CyclePlan | None, dg.SensorResult | dg.SkipReason]:
    """Gather the facts, decide with `plan_cycle`, and phrase the decision as the
    sensor's result. Shared by `epn_sensor` and `run_cycle` (mxsync, the demo)."""
    now = datetime.now(timezone.utc)
    since, until = visit_window(now, settings.visit_day_range)
    try:
        visits = portal.visits(since, until, logger=log)
    except PortalError as exc:
        return None, dg.SkipReason(f"portal unavailable, nothing changed; next tick tries again: {exc}")
    try:
        on_sftp = sftp.client(logger=log).list_epns()
    except RsyncError as exc:
        return None, dg.SkipReason(f"SFTP host unavailable, nothing changed; next tick tries again: {exc}")
    try:
        repatriated = read_epns(settings.ignore)
        alerted = read_epns(settings.alerted_path, key=ALERTED_KEY)
    except StateFileError as exc:
        raise dg.Failure(description=str(exc)) from None

    sync_pool_limit(instance, settings.max_tasks)
    dry_run = not settings.execute
    alert_in_flight, last_failed_alert = alert_state(instance)
    history = repatriation_history(instance, {e for e in on_sftp if e not in repatriated})
    plan = plan_cycle(
        visits=visits,
        on_sftp=on_sftp,
        known_partitions=instance.get_dynamic_partitions(EPN_PARTITIONS_NAME),
        repatriated=repatriated,
        alerted=alerted,
        epn_cap_map=settings.epn_cap_map,
        now=now,
        dry_run=dry_run,
        history=history,
        alert_in_flight=alert_in_flight,
        retry_base=timedelta(minutes=settings.retry_backoff_minutes),
    )
    if not (plan.repatriate or plan.alert or plan.new_partitions):
        return plan, dg.SkipReason(f"nothing to do: {plan.summary()}{_held_text(plan.held_back)}")
    log.info(f"epn_sensor: {plan.summary()}{_held_text(plan.held_back)}")
    new_partitions = [epn_partitions.build_add_request(plan.new_partitions)] if plan.new_partitions else []
    return plan, dg.SensorResult(
        run_requests=repatriation_requests(plan.repatriate, dry_run, history)
        + alert_requests(plan.alert, last_failed_alert),
        dynamic_partitions_requests=new_partitions,
    )


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
        sftp: SftpResource,
        assyncy_config: AssyncyConfigResource,
    ) -> dg.SensorResult | dg.SkipReason:
        """Every tick: ask the portal for recent visits and list the SFTP host; add each new
        EPN as a partition; request a repatriation run for each mapped EPN whose visit has
        ended and whose data is not home yet; request one alert run for new unmapped EPNs."""
        settings = assyncy_config.settings()  # read afresh: a broken config.yml fails the tick visibly
        _, result = plan_tick(context.instance, settings, portal, sftp, context.log)
        _log_to_sync_file(settings, result)
        return result

    return epn_sensor


_configured_logging: tuple | None = None


def _log_to_sync_file(settings: Settings, result: dg.SensorResult | dg.SkipReason) -> None:
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
        runs = ", ".join(r.partition_key or r.job_name for r in result.run_requests)
        log.info(f"epn_sensor: requested {len(result.run_requests)} run(s): {runs}")


def _held_text(held: Mapping[str, str], limit: int = 10) -> str:
    if not held:
        return ""
    shown = "; ".join(f"{epn}: {why}" for epn, why in list(held.items())[:limit])
    more = f"; and {len(held) - limit} more" if len(held) > limit else ""
    return f" (held back: {shown}{more})"


def repatriation_requests(epns: Iterable[str], dry_run: bool, history: Mapping[str, RunHistory]) -> list[dg.RunRequest]:
    mode = "dry-run" if dry_run else "execute"
    return [
        dg.RunRequest(
            # The key changes only when the EPN's run history does: a re-evaluated
            # tick cannot launch the same EPN twice, and a retry after a failure gets a new key.
            run_key=f"repatriate:{epn}:{mode}:{history[epn].run_id if epn in history else 'first'}",
            job_name=REPATRIATION_JOB,
            partition_key=epn,
            tags={KIND_TAG: "repatriation", "assyncy/mode": mode},
        )
        for epn in epns
    ]


def alert_requests(epns: list[str], last_failed_alert: str) -> list[dg.RunRequest]:
    if not epns:
        return []
    return [
        dg.RunRequest(
            run_key=f"alert:{_digest(epns)}:{last_failed_alert}",
            job_name=ALERT_JOB,
            run_config=dg.RunConfig(ops={"send_unknown_epn_alert_op": UnknownEpnAlertConfig(epns=epns)}),
            tags={KIND_TAG: "alert", "assyncy/epn_count": str(len(epns))},
        )
    ]
