"""epn_sensor: watches the portal and the SFTP host for EPNs to bring home."""

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

from ..canary import clear_refresh_failure, due_reasons, record_due, record_refresh_failure, refresh_failure_file
from ..config import ConfigError, Settings
from ..epn import is_valid_epn, project_for
from ..jobs import (
    ALERT_JOB,
    KIND_TAG,
    REPATRIATION_JOB,
    RepatriationConfig,
    UnknownEpnAlertConfig,
    repatriation_job,
    unknown_epn_alert_job,
)
from ..logs import LogSetupError, configure_logging
from ..partitions import EPN_PARTITIONS_NAME, epn_partitions
from ..planning import CyclePlan, LastRun, RunHistory, plan_cycle
from ..portal import PortalClient, PortalError, Visit, visit_window
from ..resources.portal import PortalResource
from ..resources.settings import AssyncyConfigResource
from ..resources.ssh_source import SshSourceResource
from ..run_records import (
    IN_FLIGHT,
    InFlight,
    Outcome,
    end_lost_runs,
    epn_history,
    in_flight,
    last_verified,
    outcome_tags,
)
from ..state import ALERTED_KEY, StateFileError, read_epns
from ..transfer import RsyncError
from ..transfer.manifests import manifest_digest

INTERVAL_ENV = "ASSYNCY_SENSOR_INTERVAL_SECONDS"
RSYNC_POOL = "rsync"
# The sensor looks every 30 s: between refreshes it decides from what it last
# learned (visit end times, the host's folders, run outcomes), which costs no
# portal request, so a visit that ends or a retry that falls due is acted on
# within a tick.
TICK_SECONDS = 30
# Never ask the portal or list the host more often than this, on average.
MIN_REFRESH_SECONDS = 60
# A tick must end within Dagster's 60 s sensor deadline, whatever the portal or host do.
REFRESH_BUDGET_SECONDS = 40
_FAILED_RUN = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


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


def sync_pool_limit(instance: dg.DagsterInstance, max_tasks: int) -> None:
    """Make the `rsync` pool allow `max-tasks` transfers at once, as the old tool's threads did."""
    storage = instance.event_log_storage
    if storage.get_concurrency_info(RSYNC_POOL).slot_count != max_tasks:
        storage.set_concurrency_slots(RSYNC_POOL, max_tasks)


# -- what the sensor remembers between ticks --------------------------------------


@dataclass
class SensorCursor:
    """The sensor's memory, kept by Dagster between ticks (small: no visit data)."""

    refreshed_at: float | None = None  # last successful portal + host refresh (epoch seconds)
    listed_at: float | None = None  # last listing of the SFTP host alone
    failures: int = 0  # refreshes failed in a row
    retry_at: float | None = None  # not before this after a failure
    # When the refreshes now failing in a row began (the canary reports it after
    # stuck-after-hours; what failed is in canary.REFRESH_FAILURE_FILE).
    failing_since: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> "SensorCursor":
        try:
            data = json.loads(text) if text else {}
            keys = ("refreshed_at", "listed_at", "failures", "retry_at", "failing_since")
            return cls(**{k: data[k] for k in keys if k in data})
        except (ValueError, TypeError):
            return cls()  # an old or foreign cursor: start afresh (a refresh now)

    def dumps(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class Facts:
    """What the portal and the SFTP host last said."""

    visits: list
    on_sftp: list[str]
    refreshed_at: float
    rejected: dict[str, str] = field(default_factory=dict)  # malformed visits the portal sent: key -> why
    # Recorded EPNs whose source changed since their last verified sync: EPN -> what changed.
    changed: dict[str, str] = field(default_factory=dict)


# Kept in the process that evaluates the sensor, and in a file of the instance's
# storage: the daemon replaces its code server every minute or so, and a new
# process must not ask the portal again just because it forgot.
_facts: dict[str, Facts] = {}
FACTS_FILE = "epn_sensor_facts.json"


def _save_facts(path: Path, facts: Facts) -> None:
    """Only what planning needs (EPN, times, equipment): no names or e-mail addresses."""
    data = {
        "refreshed_at": facts.refreshed_at,
        "on_sftp": facts.on_sftp,
        "rejected": facts.rejected,
        "changed": facts.changed,
        "visits": [
            {"id": v.id, "epn": v.epn, "start_time": v.start_time.isoformat(), "end_time": v.end_time.isoformat(),
             "equipment_id": v.equipment_id}
            for v in facts.visits
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _load_facts(path: Path, refreshed_at: float | None) -> Facts | None:
    try:
        data = json.loads(path.read_text())
        if refreshed_at is None or data.get("refreshed_at") != refreshed_at:
            return None
        visits = [Visit.from_dict({**v, "principal_scientist": None, "data_scientists": []}) for v in data["visits"]]
        return Facts(visits, list(data["on_sftp"]), data["refreshed_at"], dict(data.get("rejected") or {}),
                     dict(data.get("changed") or {}))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or unreadable: refresh


def refresh_retry_delay(failures: int, settings: Settings) -> float:
    """1, 2, 4 ... minutes after a failed refresh, never more than the sync interval."""
    return min(60.0 * 2 ** min(max(failures - 1, 0), 16), float(settings.sync_interval_seconds))


def _bounded(calls: dict, budget: float) -> dict:
    """Run each named call in its own thread, all at once, and give up on any that has
    not answered after `budget` seconds in all (a hung host must not blow the sensor's
    deadline; the call's own timeouts end its thread later). Raises the first error."""
    pool = ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="epn-sensor-refresh")
    try:
        futures = {what: pool.submit(call) for what, call in calls.items()}
        deadline = time.monotonic() + budget
        results = {}
        for what, future in futures.items():
            try:
                results[what] = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FuturesTimeout:
                raise TimeoutError(f"the {what} did not answer within {budget:g} s") from None
        return results
    finally:
        pool.shutdown(wait=False)


def _fetch_visits(settings: Settings, portal: PortalResource, log, now: datetime):
    since, until = visit_window(now, settings.visit_day_range)
    # Short timeouts: the whole tick must fit Dagster's 60 s deadline (and
    # _bounded gives up before it); the sensor's own retries come 1, 2, 4 ... minutes later.
    quick = settings.model_copy(update={"portal_timeout_seconds": min(settings.portal_timeout_seconds, 10)})
    with PortalClient.from_settings(quick, logger=log) as client:
        return client.visits(since, until), dict(client.rejected)


def _list_host(sftp: SshSourceResource, log) -> list[str]:
    client = sftp.client(logger=log)
    client.endpoint = replace(client.endpoint, connect_timeout_seconds=10)
    return client.list_epns(io_timeout_seconds=20)


def gather_facts(
    settings: Settings, portal: PortalResource, sftp: SshSourceResource, log, cursor: SensorCursor | None,
    now: datetime, cache_file: Path | None = None, failure_file: Path | None = None,
) -> tuple[Facts | None, str | None]:
    """Refresh from the portal and the host when due, else reuse what they last said.

    Returns (facts, None), or (None, skip reason) after a failed refresh, with
    `cursor` updated either way. Without a cursor (mxsync), always refresh.
    A failed refresh is noted in `failure_file` for the stuck canary, and
    forgotten at the next good one."""
    key = str(settings.ignore)  # one entry per config (tests run several in one process)
    facts = _facts.get(key)
    if cursor is not None and cache_file is not None and (facts is None or facts.refreshed_at != cursor.refreshed_at):
        facts = _load_facts(cache_file, cursor.refreshed_at)
        if facts is not None:
            _facts[key] = facts
    stamp = now.timestamp()
    if cursor is not None and facts is not None and cursor.refreshed_at == facts.refreshed_at:
        due = stamp - facts.refreshed_at >= settings.sync_interval_seconds
        if not due:
            # Only the host, and only when an ended visit is still waiting for its folder.
            waiting = _waiting_for_folder(facts, settings, now)
            if waiting and stamp - (cursor.listed_at or 0) >= MIN_REFRESH_SECONDS:
                try:
                    facts.on_sftp = _bounded({"SFTP host": lambda: _list_host(sftp, log)},
                                             REFRESH_BUDGET_SECONDS)["SFTP host"]
                    cursor.listed_at = stamp
                    if cache_file is not None:
                        _save_facts(cache_file, facts)
                except (RsyncError, TimeoutError) as exc:
                    log.warning(f"epn_sensor: listing the SFTP host for {', '.join(waiting[:5])} failed: {exc}")
            return facts, None
    if cursor is not None and cursor.retry_at and stamp < cursor.retry_at:
        when = datetime.fromtimestamp(cursor.retry_at, UTC).isoformat(timespec="seconds")
        return None, f"waiting after {cursor.failures} failed refresh(es); next try at {when}"
    try:
        answers = _bounded({
            "portal": lambda: _fetch_visits(settings, portal, log, now),
            "SFTP host": lambda: _list_host(sftp, log),
        }, REFRESH_BUDGET_SECONDS)
        (visits, rejected), on_sftp = answers["portal"], answers["SFTP host"]
    except (PortalError, RsyncError, TimeoutError) as exc:
        what = "portal" if isinstance(exc, PortalError) or "the portal" in str(exc) else "SFTP host"
        if failure_file is not None:
            since = record_refresh_failure(failure_file, what, exc, now, settings,
                                           since=cursor.failing_since if cursor is not None else None)
            if cursor is not None:
                cursor.failing_since = since
        if cursor is None:
            return None, f"{what} unavailable, nothing changed; the next cycle tries again: {exc}"
        cursor.failures += 1
        cursor.retry_at = stamp + refresh_retry_delay(cursor.failures, settings)
        when = datetime.fromtimestamp(cursor.retry_at, UTC).isoformat(timespec="seconds")
        return None, f"{what} unavailable, nothing changed; trying again at {when} (failure {cursor.failures}): {exc}"
    facts = Facts(visits, on_sftp, stamp, rejected)
    if failure_file is not None:
        clear_refresh_failure(failure_file)
    _facts[key] = facts
    if cache_file is not None:
        _save_facts(cache_file, facts)
    if cursor is not None:
        cursor.refreshed_at = cursor.listed_at = stamp
        cursor.failures, cursor.retry_at, cursor.failing_since = 0, None, None
    return facts, None


def _waiting_for_folder(facts: Facts, settings: Settings, now: datetime) -> list[str]:
    on_sftp = set(facts.on_sftp)
    recent = now - timedelta(days=1)  # older visits wait for the next full refresh
    return sorted({
        v.epn for v in facts.visits
        if v.has_ended(now) and v.end_time >= recent and v.epn not in on_sftp and is_valid_epn(v.epn)
        and project_for(v.epn, settings.epn_cap_map) is not None
    })


def look_for_new_data(
    instance: dg.DagsterInstance, settings: Settings, sftp: SshSourceResource, log, facts: Facts,
    repatriated: set[str], now: datetime, budget: float,
) -> None:
    """At a full refresh: list the source of each recorded EPN whose visit ended within
    `resync-days`, in one listing over one connection, and compare it with what its last
    verified sync recorded (files, bytes, digest). Sets `facts.changed`: EPN -> what changed.

    Data written after a visit ends (auto-processing, delayed copies) is then fetched
    although the EPN is in ignore.yml. Costs one listing, never a transfer."""
    if settings.resync_days <= 0:
        facts.changed = {}
        return
    since = now - timedelta(days=settings.resync_days)
    on_sftp = set(facts.on_sftp)
    recent = sorted({
        v.epn for v in facts.visits
        if v.has_ended(now) and v.end_time >= since and v.epn in repatriated and v.epn in on_sftp
        and is_valid_epn(v.epn) and project_for(v.epn, settings.epn_cap_map) is not None
    })
    recorded = {epn: found for epn in recent if (found := last_verified(instance, epn)) is not None}
    facts.changed = {}  # what an earlier listing saw is stale once the facts are refreshed
    if not recorded:
        return
    if budget < 5:
        log.warning(f"epn_sensor: no time left in this tick to look for new data in {len(recorded)} EPN(s); "
                    "the next refresh will")
        return
    try:
        client = sftp.client(logger=log)
        client.endpoint = replace(client.endpoint, connect_timeout_seconds=10)
        listings = _bounded({"SFTP host": lambda: client.source_summaries(list(recorded), io_timeout_seconds=20)},
                            budget)["SFTP host"]
    except (RsyncError, TimeoutError) as exc:
        log.warning(f"epn_sensor: looking for new data in {len(recorded)} recorded EPN(s) failed: {exc}")
        return
    changed = {}
    for epn, files in listings.items():
        before = recorded[epn]
        if manifest_digest(files) == before["source_digest"]:
            continue
        size = sum(files.values())
        when = datetime.fromtimestamp(before["timestamp"], UTC).isoformat(timespec="seconds")
        changed[epn] = (f"source changed since its verified sync at {when}: "
                        f"{len(files) - int(before.get('source_files', 0)):+d} file(s), "
                        f"{size - int(before.get('source_bytes', 0)):+d} bytes")
    facts.changed = changed


def due_for_resync(instance: dg.DagsterInstance, facts: Facts) -> dict[str, str]:
    """The changed EPNs whose last verified sync predates the listing that saw the change
    (a re-sync since then has fetched it)."""
    due = {}
    for epn, why in facts.changed.items():
        found = last_verified(instance, epn)
        if found is not None and found["timestamp"] < facts.refreshed_at:
            due[epn] = why
    return due


# -- what the runs say ---------------------------------------------------------------


def alert_state(instance: dg.DagsterInstance) -> tuple[set[str], str]:
    """EPNs in alert runs still queued or running, and the id of the last failed alert run."""
    in_flight: set[str] = set()
    for run in instance.get_runs(dg.RunsFilter(job_name=ALERT_JOB, statuses=list(IN_FLIGHT))):
        ops = (run.run_config or {}).get("ops", {})
        in_flight.update(ops.get("send_unknown_epn_alert_op", {}).get("config", {}).get("epns", []))
    failed = instance.get_runs(dg.RunsFilter(job_name=ALERT_JOB, statuses=list(_FAILED_RUN)), limit=1)
    return in_flight, failed[0].run_id if failed else "none"


def repatriation_history(
    instance: dg.DagsterInstance, candidates: Iterable[str], flights: InFlight
) -> dict[str, RunHistory]:
    """Each candidate EPN's repatriation state: in flight (any run: sensor, mxsync, UI, CLI),
    or its latest ended attempt and its run of failures."""
    history: dict[str, RunHistory] = {}
    for epn in candidates:
        if epn in flights.epns:
            history[epn] = RunHistory(LastRun.IN_FLIGHT, flights.epns[epn])
            continue
        found = epn_history(instance, epn)
        if found is not None:
            history[epn] = found
    return history


def _digest(items: Iterable[str]) -> str:
    return hashlib.sha256(",".join(sorted(items)).encode()).hexdigest()[:16]


def plan_tick(
    instance: dg.DagsterInstance,
    settings: Settings,
    portal: PortalResource,
    sftp: SshSourceResource,
    log,
    cursor: SensorCursor | None = None,
) -> tuple[CyclePlan | None, dg.SensorResult | dg.SkipReason]:
    """Gather the facts, decide with `plan_cycle`, and phrase the decision as the
    sensor's result. Shared by `epn_sensor` and `run_cycle` (mxsync, the demo).

    With a `cursor` (the sensor), the portal and host are asked only when a
    refresh is due and their last answers are reused in between; `cursor` is
    updated in place."""
    now = datetime.now(UTC)
    tick_started = time.monotonic()
    partitions = instance.get_dynamic_partitions(EPN_PARTITIONS_NAME)
    flights = in_flight(instance, REPATRIATION_JOB, partitions)
    lost = end_lost_runs(instance, flights, settings.stale_run_hours, now)
    lost_text = "".join(f"; ended run {run_id} as failed: {why}" for run_id, why in lost.items())
    for run_id, why in lost.items():
        log.warning(f"epn_sensor: ended run {run_id} as failed: {why}; its EPNs will be retried")
    if lost:
        flights = in_flight(instance, REPATRIATION_JOB, partitions)

    cache_file = Path(instance.storage_directory()) / FACTS_FILE if cursor is not None else None
    facts, skipped = gather_facts(settings, portal, sftp, log, cursor, now, cache_file,
                                  refresh_failure_file(instance))
    if facts is None:
        return None, dg.SkipReason(f"{skipped}{lost_text}")
    try:
        repatriated = read_epns(settings.ignore)
        alerted = read_epns(settings.alerted_path, key=ALERTED_KEY)
    except StateFileError as exc:
        raise dg.Failure(description=str(exc)) from None

    sync_pool_limit(instance, settings.max_tasks)
    dry_run = not settings.execute
    alert_in_flight, last_failed_alert = alert_state(instance)
    if facts.refreshed_at == now.timestamp():  # refreshed this tick (always, for mxsync)
        look_for_new_data(instance, settings, sftp, log, facts, set(repatriated), now,
                          budget=REFRESH_BUDGET_SECONDS + 10 - (time.monotonic() - tick_started))
        if cache_file is not None:
            _save_facts(cache_file, facts)
    resync = due_for_resync(instance, facts) if facts.changed else {}
    # A recorded EPN whose source changed is due again, under the usual rules (backoff, in flight).
    repatriated = [e for e in repatriated if e not in resync]
    repatriated_set = set(repatriated)
    candidates = {
        e for e in facts.on_sftp
        if e not in repatriated_set and is_valid_epn(e) and project_for(e, settings.epn_cap_map) is not None
    }
    history = repatriation_history(instance, candidates, flights)
    plan = plan_cycle(
        visits=facts.visits,
        on_sftp=facts.on_sftp,
        known_partitions=partitions,
        repatriated=repatriated,
        alerted=alerted,
        epn_cap_map=settings.epn_cap_map,
        now=now,
        dry_run=dry_run,
        history=history,
        alert_in_flight=alert_in_flight,
        retry_base=timedelta(minutes=settings.retry_backoff_minutes),
    )
    for epn in sorted(e for e in flights.epns if e in candidates):
        plan.in_flight.append(epn)
    plan.changed = {epn: why for epn, why in resync.items() if epn in plan.repatriate}
    for key, why in facts.rejected.items():
        # Named at every tick (the portal client logs it once): the operator's to chase.
        if key not in repatriated_set and key not in plan.repatriate:  # more telling than "no visit"
            plan.held_back[key] = f"the portal sent a malformed visit, skipped: {why}"
    # The stuck canary's clock, only from fresh facts (a failed refresh above keeps it as it was).
    record_due(instance, due_reasons(plan, facts.visits, facts.on_sftp, repatriated_set | set(resync),
                                     settings.epn_cap_map, now), now)
    if not (plan.repatriate or plan.alert or plan.new_partitions):
        return plan, dg.SkipReason(f"nothing to do: {plan.summary()}{_held_text(plan.held_back)}{lost_text}")
    log.info(f"epn_sensor: {plan.summary()}{_held_text(plan.held_back)}{lost_text}")
    new_partitions = [epn_partitions.build_add_request(plan.new_partitions)] if plan.new_partitions else []
    batches = plan_batches(plan.repatriate, settings.max_tasks, settings.max_epns_per_run)
    return plan, dg.SensorResult(
        run_requests=repatriation_requests(batches, dry_run, history)
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
        sftp: SshSourceResource,
        assyncy_config: AssyncyConfigResource,
    ) -> dg.SensorResult | dg.SkipReason:
        """Every 30 s: end runs whose worker died; refresh from the portal and the SFTP host
        when due (every sync-frequency-hours, and 1, 2, 4 ... minutes after a failure);
        add each new EPN as a partition; request batch runs for the mapped EPNs whose
        visit has ended and whose data is not home yet; request one alert run for new
        unmapped EPNs."""
        settings = assyncy_config.settings()  # read afresh: a broken config.yml fails the tick visibly
        cursor = SensorCursor.parse(context.cursor)
        plan, result = plan_tick(context.instance, settings, portal, sftp, context.log, cursor)
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
        runs = "; ".join(_describe_request(r) for r in result.run_requests) or "none"
        summary = f"{plan.summary()}{_held_text(plan.held_back)}; " if plan else ""
        log.info(f"epn_sensor: {summary}requested {len(result.run_requests)} run(s): {runs}")


def _describe_request(request: dg.RunRequest) -> str:
    ops = (request.run_config or {}).get("ops", {})
    epns = ops.get("repatriate_epns", {}).get("config", {}).get("epns") or ops.get(
        "send_unknown_epn_alert_op", {}).get("config", {}).get("epns") or []
    return f"{request.job_name} {', '.join(epns)}".strip()


def _held_text(held: Mapping[str, str], limit: int = 10) -> str:
    if not held:
        return ""
    shown = "; ".join(f"{epn}: {why}" for epn, why in list(held.items())[:limit])
    more = f"; and {len(held) - limit} more" if len(held) > limit else ""
    return f" (held back: {shown}{more})"


def plan_batches(epns: list[str], max_tasks: int, per_run: int) -> list[list[str]]:
    """Share the due EPNs out over runs: at least `max-tasks` runs when there are enough
    EPNs (so every rsync slot has work), at most `max-epns-per-run` EPNs in each."""
    if not epns:
        return []
    size = max(1, min(per_run, math.ceil(len(epns) / max_tasks)))
    return [epns[i : i + size] for i in range(0, len(epns), size)]


def repatriation_requests(
    batches: list[list[str]], dry_run: bool, history: Mapping[str, RunHistory]
) -> list[dg.RunRequest]:
    mode = "dry-run" if dry_run else "execute"
    requests = []
    for batch in batches:
        # The key changes only when one of its EPNs' run history does: a re-evaluated
        # tick cannot launch the same batch twice, and a retry after a failure gets a new key.
        attempts = [f"{epn}@{history[epn].run_id if epn in history else 'first'}" for epn in batch]
        requests.append(dg.RunRequest(
            run_key=f"repatriate:{mode}:{_digest(attempts)}",
            job_name=REPATRIATION_JOB,
            # The mode is decided here, with the plan (mxsync --execute overrides config.yml's `execute`).
            run_config=dg.RunConfig(ops={"repatriate_epns": RepatriationConfig(epns=batch, execute=not dry_run)}),
            tags={KIND_TAG: "repatriation", "assyncy/mode": mode, "assyncy/epn_count": str(len(batch)),
                  **outcome_tags(batch, Outcome.QUEUED)},
        ))
    return requests


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
