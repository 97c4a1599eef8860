"""The stuck-EPN canary: what has been due for longer than `stuck-after-hours`, and why.

At each tick with fresh facts, `epn_sensor` (and each mxsync cycle) records which
EPNs are due (visit ended, mapped, not in ignore.yml) and why they are not home
yet (`record_due`): the clock lives in due.py, the tick's reason beside it. A
failed portal or SFTP-host refresh is recorded too (refresh_failures.py),
and cleared by the next good one. The 01:00 digest (`send_daily_digest`) lists
what has been stuck longer than `stuck-after-hours`, each with its reason as the
instance says it at that moment (in flight, failing with its last error, held
back, never found on the host), each EPN at most once a day.

Every file lives in the instance's storage folder, holds EPNs, times and short
error texts with secrets masked, and is written and read through statefiles.py:
fsynced, replaced atomically, and moved aside with a warning when corrupt.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg

from .alerts.stuck_section import StuckEntry
from .config import Settings
from .domain import Visit
from .due import read_due_since, stuck_since, update_due_since
from .epn import is_mapped_epn
from .epnalert import send_unknown_epn_alert, unmapped_epns_on_host
from .errors_of_runs import epn_last_error
from .mail import Mailer
from .names import EPN_PARTITIONS_NAME, REPATRIATION_JOB
from .outcomes import Outcome
from .planning import CyclePlan
from .portal.client import PortalClient
from .refresh_failures import refresh_failure_file, short_error
from .run_records import epn_history, in_flight
from .statefiles import read_json, write_json
from .transfer import RsyncClient, RsyncError

REASONS_FILE = "epn_due_reasons.json"
REPORTED_FILE = "stuck_reported.json"

# What a due EPN waits for, as the tick saw it (the digest says more: see describe).
REQUESTED = "a repatriation run was requested"
NOT_ON_HOST = "never found on the SFTP host: no folder for it under source-root"
IN_FLIGHT = "waiting on a run"

_RUN_STATES = {
    dg.DagsterRunStatus.QUEUED: "queued",
    dg.DagsterRunStatus.NOT_STARTED: "starting",
    dg.DagsterRunStatus.STARTING: "starting",
    dg.DagsterRunStatus.STARTED: "running",
    dg.DagsterRunStatus.CANCELING: "being cancelled",
}

log = logging.getLogger("assyncy.sync")


# -- at each tick: which EPNs are due, and why -----------------------------------------


def ended_epns(visits: Iterable[Visit], now: datetime) -> set[str]:
    """EPNs with at least one visit, every one of them ended (as planning holds a running one back)."""
    running: set[str] = set()
    seen: set[str] = set()
    for visit in visits:
        seen.add(visit.epn)
        if not visit.has_ended(now):
            running.add(visit.epn)
    return seen - running


def due_reasons(
    plan: CyclePlan,
    visits: Iterable[Visit],
    on_sftp: Iterable[str],
    home: Iterable[str],
    epn_cap_map: Mapping[str, str],
    now: datetime,
) -> dict[str, str]:
    """The EPNs due at this tick, EPN -> why it is not home yet: the plan's EPNs
    (to repatriate, held back, in flight) that are valid, mapped, whose visit has
    ended and that are not in ignore.yml (`home`)."""
    ended, home, on_host = ended_epns(visits, now), set(home), set(on_sftp)
    reasons: dict[str, str] = {}
    for epn in plan.repatriate:
        reasons[epn] = REQUESTED
    for epn, why in plan.held_back.items():
        reasons[epn] = why
    for epn in plan.in_flight:
        reasons[epn] = IN_FLIGHT
    return {
        epn: (why if epn in on_host else NOT_ON_HOST)
        for epn, why in reasons.items()
        if epn in ended and epn not in home and is_mapped_epn(epn, epn_cap_map)
    }


def record_due(instance: dg.DagsterInstance, reasons: Mapping[str, str], now: datetime) -> dict[str, float]:
    """Start or keep each due EPN's clock (due.py) and keep its reason; writes only what changed."""
    due = update_due_since(instance, reasons, now)
    path = _path(instance, REASONS_FILE)
    kept = {epn: reasons[epn] for epn in due}
    if read_json(path, {}) != kept:
        write_json(path, kept)
    return due


def read_reasons(instance: dg.DagsterInstance) -> dict[str, str]:
    data = read_json(_path(instance, REASONS_FILE), {})
    return {str(k): str(v) for k, v in data.items()}


# -- at the digest: what is stuck, and why ------------------------------------------------


def describe(tick_reason: str, flight: tuple[str, str] | None, failing: tuple[int, str] | None) -> str:
    """A stuck EPN's reason, from what the instance says now and what the last tick saw.

    `flight` is (run id, its status) when a run carries the EPN; `failing` is
    (failed runs in a row, the last one's error) when its last attempt failed."""
    if flight is not None:
        run_id, status = flight
        return f"waiting on a run: run {run_id} is {status}"
    if failing is not None:
        count, error = failing
        return f"failing: {count} run(s) failed in a row; last error: {error}"
    if tick_reason == NOT_ON_HOST:
        return NOT_ON_HOST
    if tick_reason in (REQUESTED, IN_FLIGHT):
        return f"waiting on a run: {REQUESTED}, none is queued or running"
    return f"held back: {tick_reason}"


def stuck_report(instance: dg.DagsterInstance, settings: Settings, now: datetime) -> list[StuckEntry]:
    """Every EPN due for longer than `stuck-after-hours`, oldest first, each with its reason,
    then a portal or SFTP-host refresh failing for as long."""
    hours = settings.stuck_after_hours
    stuck = stuck_since(read_due_since(instance), now, hours)
    entries = []
    if stuck:
        reasons = read_reasons(instance)
        flights = in_flight(instance, REPATRIATION_JOB, instance.get_dynamic_partitions(EPN_PARTITIONS_NAME))
        for epn, since in sorted(stuck.items(), key=lambda item: (item[1], item[0])):
            flight = None
            if epn in flights.epns:
                run = instance.get_run_by_id(flights.epns[epn])
                flight = (flights.epns[epn], _RUN_STATES.get(run.status, "in flight") if run else "in flight")
            failing = None
            history = epn_history(instance, epn) if flight is None else None
            if history is not None and history.status is Outcome.FAILED:
                error = short_error(epn_last_error(instance, history.run_id, epn), settings)
                failing = (max(history.consecutive_failures, 1), error)
            entries.append(
                StuckEntry(epn, datetime.fromtimestamp(since, UTC), describe(reasons.get(epn, ""), flight, failing))
            )
    failure = read_json(refresh_failure_file(instance), {})
    if isinstance(failure.get("since"), (int, float)):
        since = float(failure["since"])
        if since <= now.timestamp() - hours * 3600:
            last = datetime.fromtimestamp(float(failure.get("last_failed_at") or since), UTC)
            entries.append(
                StuckEntry(
                    str(failure.get("what") or "refresh"),
                    datetime.fromtimestamp(since, UTC),
                    f"{failure.get('kind') or 'refresh'} failing at every refresh (last tried "
                    f"{last.isoformat(timespec='seconds')}): {failure.get('error') or '(no error text)'}",
                )
            )
    return entries


# -- once a day -------------------------------------------------------------------------


def unreported(entries: Sequence[StuckEntry], reported: Mapping[str, str], today: date) -> list[StuckEntry]:
    """The entries not yet reported `today` (`reported`: name -> ISO date last reported)."""
    return [e for e in entries if reported.get(e.name) != today.isoformat()]


def read_reported(instance: dg.DagsterInstance) -> dict[str, str]:
    data = read_json(_path(instance, REPORTED_FILE), {})
    return {str(k): str(v) for k, v in data.items()}


def mark_reported(instance: dg.DagsterInstance, names: Iterable[str], today: date) -> None:
    """Remember that `names` were reported `today`; older days are forgotten."""
    day = today.isoformat()
    kept = {name: when for name, when in read_reported(instance).items() if when == day}
    kept.update(dict.fromkeys(names, day))
    write_json(_path(instance, REPORTED_FILE), kept)


def send_daily_digest(
    instance: dg.DagsterInstance,
    settings: Settings,
    portal: PortalClient,
    mailer: Mailer,
    sftp: RsyncClient,
    *,
    logger: logging.Logger | None = None,
    now: datetime | None = None,
) -> list[str]:
    """The 01:00 digest: every unmapped EPN on the host, and every stuck one not yet
    reported today. Sent when either list holds something. Returns the unmapped EPNs.

    When stuck EPNs are to be reported, a host or portal that cannot be asked
    (the very failure being reported, perhaps) does not stop the e-mail: it says so."""
    logger = logger or log
    now = now or datetime.now(UTC)
    today = now.astimezone(ZoneInfo(settings.schedule_timezone)).date()
    stuck = unreported(stuck_report(instance, settings, now), read_reported(instance), today)
    notes = []
    try:
        epns = unmapped_epns_on_host(settings, sftp)
    except RsyncError as exc:
        if not stuck:
            raise
        epns = []
        notes.append(f"The SFTP host could not be listed for unmapped EPNs: {short_error(str(exc), settings)}")
    sent = send_unknown_epn_alert(settings, portal, mailer, epns, digest=True, stuck=stuck, notes=notes, logger=logger)
    if stuck:
        mark_reported(instance, [e.name for e in stuck], today)
        logger.info(f"digest reported {len(stuck)} stuck: {', '.join(e.name for e in stuck)}")
    return sent


# -- files ------------------------------------------------------------------------------


def _path(instance: dg.DagsterInstance, name: str) -> Path:
    return Path(instance.storage_directory()) / name
