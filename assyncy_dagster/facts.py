"""What the portal and the SFTP host last said, and when to ask them again.

Each tick of `epn_sensor` (and each mxsync cycle) starts from `gather_facts`:
the visits of the portal's window and the EPN folders on the SFTP host, asked
afresh every `sync-frequency-hours` (and 1, 2, 4 ... minutes after a failed
refresh), reused from memory or from a file of the instance's storage in
between. At a full refresh, `look_for_new_data` also lists the source of each
recently repatriated EPN to see whether data arrived after its verified sync.
A refresh never runs past its budget, so a tick fits Dagster's 60 s deadline.
"""

import json
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import dagster as dg

from .config import Settings
from .domain import Visit, visit_window
from .epn import is_mapped_epn
from .portal.client import PortalClient
from .portal.errors import PortalError
from .refresh_failures import clear_refresh_failure, record_refresh_failure
from .run_records import last_verified
from .statefiles import read_json, write_json
from .transfer import RsyncClient, RsyncError, SshConfigError
from .transfer.manifests import census, tree_digest

# Never ask the portal or list the host more often than this, on average.
MIN_REFRESH_SECONDS = 60


class PortalSource(Protocol):
    """What the facts need of the portal (resources.portal.PortalResource fits: the facts sit below
    the Dagster wiring and do not import it). The refresh builds its own client from the settings,
    with the tick's deadline."""

    def settings(self) -> Settings: ...


class SourceHost(Protocol):
    """What the facts need of the SFTP host (resources.ssh_source.SshSourceResource fits)."""

    def client(self, logger: Any = None) -> RsyncClient: ...


# A tick must end within Dagster's 60 s sensor deadline, whatever the portal or host do.
REFRESH_BUDGET_SECONDS = 40


@dataclass
class SensorCursor:
    """The sensor's memory, kept by Dagster between ticks (small: no visit data)."""

    refreshed_at: float | None = None  # last successful portal + host refresh (epoch seconds)
    listed_at: float | None = None  # last listing of the SFTP host alone
    failures: int = 0  # refreshes failed in a row
    retry_at: float | None = None  # not before this after a failure
    # When the refreshes now failing in a row began (the canary reports it after
    # stuck-after-hours; what failed is in refresh_failures.REFRESH_FAILURE_FILE).
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


def save_facts(path: Path, facts: Facts) -> None:
    """Only what planning needs (EPN, times, equipment): no names or e-mail addresses."""
    data = {
        "refreshed_at": facts.refreshed_at,
        "on_sftp": facts.on_sftp,
        "rejected": facts.rejected,
        "changed": facts.changed,
        "visits": [
            {
                "id": v.id,
                "epn": v.epn,
                "start_time": v.start_time.isoformat(),
                "end_time": v.end_time.isoformat(),
                "equipment_id": v.equipment_id,
            }
            for v in facts.visits
        ],
    }
    write_json(path, data)


def read_saved_facts(path: Path) -> dict:
    """The facts file as `save_facts` wrote it; {} when there is none yet, or when it was
    corrupt (then moved aside with a warning, and the next refresh writes a new one)."""
    return read_json(path, {})


def _load_facts(path: Path, refreshed_at: float | None) -> Facts | None:
    try:
        data = read_saved_facts(path)
        if refreshed_at is None or data.get("refreshed_at") != refreshed_at:
            return None
        visits = [Visit.from_dict({**v, "principal_scientist": None, "data_scientists": []}) for v in data["visits"]]
        return Facts(
            visits,
            list(data["on_sftp"]),
            data["refreshed_at"],
            dict(data.get("rejected") or {}),
            dict(data.get("changed") or {}),
        )
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


def _fetch_visits(settings: Settings, portal: PortalSource, log, now: datetime):
    since, until = visit_window(now, settings.visit_day_range)
    # Short timeouts: the whole tick must fit Dagster's 60 s deadline (and
    # _bounded gives up before it); the sensor's own retries come 1, 2, 4 ... minutes later.
    # The deadline ends this thread too, retries and all, however slowly the portal answers; a
    # second before _bounded gives up, so that the tick reports the portal's own error (its equipment).
    quick = settings.model_copy(update={"portal_timeout_seconds": min(settings.portal_timeout_seconds, 10)})
    deadline = time.monotonic() + max(1.0, REFRESH_BUDGET_SECONDS - 1)
    with PortalClient.from_settings(quick, logger=log, deadline=deadline) as client:
        answer = client.answer(since, until)
    return answer.visits, answer.malformed


def _list_host(sftp: SourceHost, log) -> list[str]:
    client = sftp.client(logger=log)
    client.endpoint = replace(client.endpoint, connect_timeout_seconds=10)
    return client.list_epns(io_timeout_seconds=20)


def gather_facts(
    settings: Settings,
    portal: PortalSource,
    sftp: SourceHost,
    log,
    cursor: SensorCursor | None,
    now: datetime,
    cache_file: Path | None = None,
    failure_file: Path | None = None,
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
                    facts.on_sftp = _bounded({"SFTP host": lambda: _list_host(sftp, log)}, REFRESH_BUDGET_SECONDS)[
                        "SFTP host"
                    ]
                    cursor.listed_at = stamp
                    if cache_file is not None:
                        save_facts(cache_file, facts)
                except (RsyncError, SshConfigError, TimeoutError) as exc:
                    log.warning(f"epn_sensor: listing the SFTP host for {', '.join(waiting[:5])} failed: {exc}")
            return facts, None
    if cursor is not None and cursor.retry_at and stamp < cursor.retry_at:
        when = datetime.fromtimestamp(cursor.retry_at, UTC).isoformat(timespec="seconds")
        return None, f"waiting after {cursor.failures} failed refresh(es); next try at {when}"
    try:
        answers = _bounded(
            {
                "portal": lambda: _fetch_visits(settings, portal, log, now),
                "SFTP host": lambda: _list_host(sftp, log),
            },
            REFRESH_BUDGET_SECONDS,
        )
        (visits, rejected), on_sftp = answers["portal"], answers["SFTP host"]
    # A settings error (a missing key-file or known-hosts-file) is a failed refresh too, naming the setting.
    except (PortalError, RsyncError, SshConfigError, TimeoutError) as exc:
        what = "portal" if isinstance(exc, PortalError) or "the portal" in str(exc) else "SFTP host"
        if failure_file is not None:
            since = record_refresh_failure(
                failure_file, what, exc, now, settings, since=cursor.failing_since if cursor is not None else None
            )
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
        save_facts(cache_file, facts)
    if cursor is not None:
        cursor.refreshed_at = cursor.listed_at = stamp
        cursor.failures, cursor.retry_at, cursor.failing_since = 0, None, None
    return facts, None


def _waiting_for_folder(facts: Facts, settings: Settings, now: datetime) -> list[str]:
    on_sftp = set(facts.on_sftp)
    recent = now - timedelta(days=1)  # older visits wait for the next full refresh
    return sorted(
        {
            v.epn
            for v in facts.visits
            if v.has_ended(now)
            and v.end_time >= recent
            and v.epn not in on_sftp
            and is_mapped_epn(v.epn, settings.epn_cap_map)
        }
    )


def look_for_new_data(
    instance: dg.DagsterInstance,
    settings: Settings,
    sftp: SourceHost,
    log,
    facts: Facts,
    repatriated: set[str],
    now: datetime,
    tick_started: float,
) -> None:
    """At a full refresh: list the source of each recorded EPN whose visit ended within
    `resync-days`, in one listing over one connection, and compare it with what its last
    verified sync recorded (files, bytes, digest). Sets `facts.changed`: EPN -> what changed.

    Data written after a visit ends (auto-processing, delayed copies) is then fetched
    although the EPN is in ignore.yml. Costs one listing, never a transfer, within what
    is left of the tick (`tick_started`, a time.monotonic() stamp) before its deadline."""
    budget = REFRESH_BUDGET_SECONDS + 10 - (time.monotonic() - tick_started)
    if settings.resync_days <= 0:
        facts.changed = {}
        return
    since = now - timedelta(days=settings.resync_days)
    on_sftp = set(facts.on_sftp)
    recent = sorted(
        {
            v.epn
            for v in facts.visits
            if v.has_ended(now)
            and v.end_time >= since
            and v.epn in repatriated
            and v.epn in on_sftp
            and is_mapped_epn(v.epn, settings.epn_cap_map)
        }
    )
    recorded = {epn: found for epn in recent if (found := last_verified(instance, epn)) is not None}
    facts.changed = {}  # what an earlier listing saw is stale once the facts are refreshed
    if not recorded:
        return
    if budget < 5:
        log.warning(
            f"epn_sensor: no time left in this tick to look for new data in {len(recorded)} EPN(s); "
            "the next refresh will"
        )
        return
    try:
        client = sftp.client(logger=log)
        client.endpoint = replace(client.endpoint, connect_timeout_seconds=10)
        listings = _bounded(
            {"SFTP host": lambda: client.source_summaries(list(recorded), io_timeout_seconds=20)}, budget
        )["SFTP host"]
    except (RsyncError, SshConfigError, TimeoutError) as exc:
        log.warning(f"epn_sensor: looking for new data in {len(recorded)} recorded EPN(s) failed: {exc}")
        return
    changed = {}
    for epn, tree in listings.items():
        before = recorded[epn]
        if tree_digest(tree) == before["source_digest"]:
            continue
        held = census(tree)
        files, size = held.files, held.bytes
        when = datetime.fromtimestamp(before["timestamp"], UTC).isoformat(timespec="seconds")
        changed[epn] = (
            f"source changed since its verified sync at {when}: "
            f"{files - int(before.get('source_files', 0)):+d} file(s), "
            f"{size - int(before.get('source_bytes', 0)):+d} bytes"
        )
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
