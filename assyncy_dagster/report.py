"""The repatriation report's rules: what state each EPN is in, decided from facts alone.

The report reconciles the sources of truth about an EPN: what the portal says
(its visit), what the SFTP host holds (its folder), what ignore.yml and the
last verified sync recorded, what the runs did, and what the destination holds
now. `decide` turns one EPN's facts into one state (`State`; what each means is
`MEANING`, the one wording: the HTML page's legend, and the README's table, which
a test keeps equal to it), and a short detail that tells the operator why.

No Dagster imports and no pandas, so these rules test in microseconds: the
asset gathers the facts, this module decides, report_files.py draws and writes.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from typing import Any

from .epn import base_number, is_valid_epn
from .outcomes import Outcome


class State(str, enum.Enum):
    RUNNING = "running"
    WAITING = "waiting"
    HOME = "home"
    CORRUPT = "corrupt"
    PARTIAL = "partial"
    CHANGED = "changed"
    UNMAPPED = "unmapped"
    FAILED = "failed"
    STUCK = "stuck"
    NOT_ON_HOST = "not on host"
    DRY_RUN_ONLY = "dry-run only"


# What each state means to an operator: the HTML page's legend and the README's table (kept equal
# by tests/unit/test_report.py), in one wording.
MEANING = {
    State.RUNNING: "the visit has not ended; its data may still grow",
    State.WAITING: (
        "the visit has ended and the data is not home yet: queued, in transfer, or held back "
        "(empty folder, no visit in the portal, a malformed visit of it in the portal, named)"
    ),
    State.HOME: (
        "recorded in ignore.yml, and the destination holds at least the files and bytes the last verified "
        "sync counted at the source"
    ),
    State.CORRUPT: (
        "recorded, but the last fixity audit found files corrupt, missing or changed at home; the row names "
        "them, and a backfill of the partition repairs it"
    ),
    State.PARTIAL: (
        "recorded in ignore.yml, but the destination is missing or holds fewer files or bytes than the last "
        "verified sync counted"
    ),
    State.CHANGED: (
        "recorded, but the source has grown since the verified sync (epn_sensor's re-check within "
        "resync-days); a re-sync is due"
    ),
    State.UNMAPPED: "its base number is not in epn_cap_map",
    State.FAILED: "the last attempt failed; the row carries the error",
    State.STUCK: "due for longer than stuck-after-hours (the digest's stuck section); the row says what holds it",
    State.NOT_ON_HOST: "the visit has ended, but the SFTP host has no folder for it",
    State.DRY_RUN_ONLY: "only a dry-run (execute: false) has seen it; nothing copied",
}

# The attention table lists what is not home, the most urgent first.
URGENCY = [
    State.CORRUPT,
    State.PARTIAL,
    State.FAILED,
    State.STUCK,
    State.CHANGED,
    State.NOT_ON_HOST,
    State.DRY_RUN_ONLY,
    State.WAITING,
    State.UNMAPPED,
    State.RUNNING,
    State.HOME,
]


@dataclass(frozen=True)
class Verified:
    """What the EPN's last verified sync counted at the source, and when (epoch seconds)."""

    timestamp: float
    source_files: int
    source_bytes: int
    # Files with no content checksum recorded (brought home before checksums, or by the old
    # tool): "verified by size only" until a full_checksum run gives them one.
    by_size_only: int = 0


@dataclass(frozen=True)
class Holding:
    """What the destination folder holds. Counts are None when only its existence was checked."""

    files: int | None = None
    bytes: int | None = None


@dataclass(frozen=True)
class EpnFacts:
    """Everything known about one EPN, from every source, at one moment."""

    epn: str
    project: str | None = None  # None: its base number is not in epn_cap_map
    equipment: str = ""
    visit_start: datetime | None = None
    visit_end: datetime | None = None  # None: no visit in the portal within visit-day-range
    principal_scientist: str = ""
    on_host: bool | None = None  # None: the SFTP host could not be asked
    recorded: bool = False  # in ignore.yml
    verified: Verified | None = None
    destination: Holding | None = None  # None: <root>/<project>/<epn>/data does not exist
    attempt: Outcome | None = None  # of its latest repatriation run
    run_id: str = ""
    error: str = ""
    changed: str = ""  # what epn_sensor saw change at the source since the verified sync
    changed_seen_at: float | None = None  # when it saw that (its last full refresh)
    due_since: float | None = None  # first seen due (due.py)
    stuck: bool = False  # due for longer than stuck-after-hours
    # Why its visits hold it back although every visit read has ended (planning.visits_hold): the
    # portal sent a malformed visit of it, named. "" when nothing holds it.
    held: str = ""
    # What the last fixity audit found wrong at home: (path under data/, problem), and when it ran.
    damaged: tuple[tuple[str, str], ...] = ()
    audited_at: float | None = None


@dataclass(frozen=True)
class Decision:
    state: State
    detail: str


def _when(stamp: float | datetime | None, tz: tzinfo | None = None) -> str:
    if stamp is None:
        return ""
    moment = stamp if isinstance(stamp, datetime) else datetime.fromtimestamp(stamp, tz)
    return moment.astimezone(tz).isoformat(timespec="minutes")


def shortfall(facts: EpnFacts, tz: tzinfo | None = None) -> str:
    """Why a recorded EPN's destination falls short of its verified sync, or "" when it does not."""
    if facts.destination is None:
        return "recorded in ignore.yml, but its destination folder is missing"
    verified, held = facts.verified, facts.destination
    if verified is None or held.files is None or held.bytes is None:
        return ""
    if held.files >= verified.source_files and held.bytes >= verified.source_bytes:
        return ""
    return (
        f"the destination holds {held.files} of {verified.source_files} file(s) and {held.bytes} of "
        f"{verified.source_bytes} bytes counted by the verified sync of {_when(verified.timestamp, tz)}"
    )


def _changed(facts: EpnFacts) -> bool:
    """The sensor saw the source change, and no verified sync has fetched it since."""
    if not facts.changed:
        return False
    return facts.verified is None or facts.changed_seen_at is None or facts.verified.timestamp < facts.changed_seen_at


SHOWN_DAMAGED = 5


def _damage(facts: EpnFacts, tz: tzinfo | None) -> str:
    """The files the last fixity audit found, and the repair."""
    shown = ", ".join(f"{path} ({problem})" for path, problem in facts.damaged[:SHOWN_DAMAGED])
    more = f" and {len(facts.damaged) - SHOWN_DAMAGED} more" if len(facts.damaged) > SHOWN_DAMAGED else ""
    when = f" of {_when(facts.audited_at, tz)}" if facts.audited_at is not None else ""
    repair = (
        "repair: a backfill of its epn_data partition fetches them again"
        if facts.on_host is not False
        else "its folder is no longer on the SFTP host, so they cannot be fetched again"
    )
    return f"the fixity audit{when} found {len(facts.damaged)} file(s) at home not as recorded: {shown}{more}; {repair}"


def decide(facts: EpnFacts, now: datetime, tz: tzinfo | None = None) -> Decision:
    """The EPN's state and a one-line reason, from its facts alone."""
    if facts.project is None:
        base = base_number(facts.epn) if is_valid_epn(facts.epn) else facts.epn
        return Decision(State.UNMAPPED, f"base number {base} is not in epn_cap_map")
    if facts.recorded:
        if facts.damaged:
            return Decision(State.CORRUPT, _damage(facts, tz))
        short = shortfall(facts, tz)
        if short:
            repair = (
                "materialise its epn_data partition again to repair it"
                if facts.on_host is not False
                else "its folder is no longer on the SFTP host, so it cannot be fetched again"
            )
            return Decision(State.PARTIAL, f"{short}; {repair}")
        if _changed(facts):
            busy = "; re-sync in transfer" if facts.attempt is not None and facts.attempt.in_flight else ""
            return Decision(State.CHANGED, f"{facts.changed}{busy}")
        if facts.verified is None:
            return Decision(State.HOME, "recorded in ignore.yml (no verified sync in this instance to compare with)")
        by_size = facts.verified.by_size_only
        size_only = (
            f"; {by_size} of {facts.verified.source_files} file(s) verified by size only (no checksum recorded; "
            "a full_checksum run of epn_data gives them one)"
            if by_size
            else ""
        )
        return Decision(State.HOME, f"verified {_when(facts.verified.timestamp, tz)}{size_only}")
    if facts.visit_end is not None and facts.visit_end > now:
        return Decision(State.RUNNING, f"visit ends {_when(facts.visit_end, tz)}")
    underlying = _not_home(facts, tz)
    if facts.stuck:
        since = f"due since {_when(facts.due_since, tz)}: " if facts.due_since is not None else ""
        return Decision(State.STUCK, f"{since}{underlying.state.value}: {underlying.detail}")
    return underlying


def _not_home(facts: EpnFacts, tz: tzinfo | None) -> Decision:
    """Why a mapped EPN whose visit has ended (or has no visit) is not home."""
    run = f" (run {facts.run_id[:8]})" if facts.run_id else ""
    if facts.attempt is not None and facts.attempt.in_flight:
        return Decision(State.WAITING, f"queued or in transfer{run}")
    if facts.held:
        return Decision(State.WAITING, facts.held)
    if facts.attempt is Outcome.FAILED:
        # The error's first line (rsync's own words follow it in last_error).
        first = facts.error.strip().splitlines()[0] if facts.error.strip() else ""
        return Decision(State.FAILED, first or f"the last run failed{run}")
    if facts.attempt is Outcome.DRY_RUN:
        return Decision(State.DRY_RUN_ONLY, f"a dry-run listed it{run}; nothing copied (execute: false)")
    if facts.on_host is False:
        if facts.destination is not None:
            return Decision(State.NOT_ON_HOST, "found only at the destination; not recorded in ignore.yml")
        return Decision(State.NOT_ON_HOST, "no folder on the SFTP host yet")
    if facts.visit_end is None:
        return Decision(State.WAITING, "no visit in the portal within visit-day-range: held back")
    if facts.on_host is None:
        return Decision(State.WAITING, "the SFTP host could not be listed")
    if facts.attempt is Outcome.EMPTY:
        return Decision(State.WAITING, "its folder on the SFTP host held no files at the last look: held back")
    if facts.attempt is Outcome.HOME:
        return Decision(State.WAITING, f"brought home{run} but not in ignore.yml: due again")
    return Decision(State.WAITING, f"visit ended {_when(facts.visit_end, tz)}; not synced yet")


# -- rows of the report --------------------------------------------------------------

COLUMNS = [
    "epn",
    "project",
    "equipment",
    "visit_start",
    "visit_end",
    "principal_scientist",
    "state",
    "detail",
    "source_files",
    "source_bytes",
    "destination_files",
    "destination_bytes",
    "last_verified",
    "last_error",
    "on_host",
    "recorded",
    "due_since",
    "last_run_id",
]


def report_row(facts: EpnFacts, now: datetime, tz: tzinfo | None = None) -> dict[str, object]:
    """One row of the report: the EPN's facts and its decided state, as plain values."""
    decision = decide(facts, now, tz)
    verified, held = facts.verified, facts.destination
    return {
        "epn": facts.epn,
        "project": facts.project or "",
        "equipment": facts.equipment,
        "visit_start": _when(facts.visit_start, tz),
        "visit_end": _when(facts.visit_end, tz),
        "principal_scientist": facts.principal_scientist,
        "state": decision.state.value,
        "detail": decision.detail,
        "source_files": verified.source_files if verified else None,
        "source_bytes": verified.source_bytes if verified else None,
        "destination_files": held.files if held else 0,
        "destination_bytes": held.bytes if held else 0,
        "last_verified": _when(verified.timestamp, tz) if verified else "",
        "last_error": facts.error,
        "on_host": "" if facts.on_host is None else ("yes" if facts.on_host else "no"),
        "recorded": "yes" if facts.recorded else "no",
        "due_since": _when(facts.due_since, tz),
        "last_run_id": facts.run_id,
    }


# Keys typed Any: the rows are dicts keyed by str or a DataFrame's `to_dict("records")`, keyed by Hashable.
def attention_order(rows: Iterable[Mapping[Any, object]]) -> list[Mapping[Any, object]]:
    """The rows that are not home, the most urgent state first, then the latest visit first."""
    rank = {state.value: i for i, state in enumerate(URGENCY)}
    needing = [r for r in rows if r["state"] != State.HOME.value]
    needing.sort(key=lambda r: str(r["visit_end"]), reverse=True)
    needing.sort(key=lambda r: rank.get(str(r["state"]), len(rank)))
    return needing


REPAIRABLE = (State.PARTIAL.value, State.CORRUPT.value)


def repair_selection(rows: Iterable[Mapping[str, object]]) -> str:
    """The partial and corrupt EPNs that a backfill can repair (their folder is still on the SFTP
    host), as the partition selection the UI's Materialize dialog takes: `12282a, 13001a`."""
    return ", ".join(sorted(str(r["epn"]) for r in rows if r["state"] in REPAIRABLE and r["on_host"] != "no"))


def counts_by_state(rows: Iterable[Mapping[str, object]]) -> dict[str, int]:
    counted = Counter(str(r["state"]) for r in rows)
    return {state.value: counted[state.value] for state in URGENCY if counted[state.value]}


# -- the plot's series ----------------------------------------------------------------


def week_of(stamp: float, tz: tzinfo | None = None) -> date:
    """The Monday of the week `stamp` falls in, in `tz`."""
    day = datetime.fromtimestamp(stamp, tz).date()
    return day - timedelta(days=day.weekday())


def bytes_by_week(syncs: Iterable[tuple[float, str, int]], tz: tzinfo | None = None) -> dict[tuple[date, str], int]:
    """(week, project) -> bytes copied, from (timestamp, project, bytes transferred) of every real sync."""
    totals: Counter[tuple[date, str]] = Counter()
    for stamp, project, size in syncs:
        totals[(week_of(stamp, tz), project)] += int(size)
    return dict(totals)


def backlog_by_day(
    due: Iterable[tuple[datetime, float | None]], today: date, tz: tzinfo | None = None
) -> dict[date, int]:
    """Day -> EPNs due and not home at the end of that day.

    `due` holds, for each mapped EPN whose visit has ended, its visit's end and
    the time of its first verified sync (None: not home yet). An EPN counts
    from the day its visit ended until the day before it came home."""
    changes: Counter[date] = Counter()
    first: date | None = None
    for ended, home_at in due:
        start = ended.astimezone(tz).date()
        end = datetime.fromtimestamp(home_at, tz).date() if home_at is not None else None
        if end is not None and end <= start:
            continue  # home on the day it ended: never in the backlog at a day's end
        changes[start] += 1
        if end is not None:
            changes[end] -= 1
        first = start if first is None else min(first, start)
    if first is None or first > today:
        return {}
    backlog, running, day = {}, 0, first
    while day <= today:
        running += changes.get(day, 0)
        backlog[day] = running
        day += timedelta(days=1)
    return backlog
