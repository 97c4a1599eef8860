"""What one watch cycle should do, decided from facts alone.

`plan_cycle` is shared by `epn_sensor` and `mxsync`, so both apply the same
rules: an EPN is repatriated when it is mapped, its visit has ended, its folder
is on the SFTP host, and it is neither in ignore.yml nor already on its way.
Whether an EPN's visits say its beamtime is over is `visits_hold`'s to decide,
for the sensor, mxsync, `epn_data` and the report alike.
No Dagster imports: the sensor gathers the facts, this module decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .domain import Visit
from .epn import is_valid_epn, project_for
from .outcomes import Outcome


@dataclass(frozen=True)
class RunHistory:
    """The latest repatriation run of one EPN, and how many failed in a row."""

    status: Outcome  # in flight (queued, running), succeeded (home, dry-run), failed or empty
    run_id: str
    ended_at: datetime | None = None
    consecutive_failures: int = 0


@dataclass
class CyclePlan:
    new_partitions: list[str] = field(default_factory=list)
    repatriate: list[str] = field(default_factory=list)
    alert: list[str] = field(default_factory=list)
    held_back: dict[str, str] = field(default_factory=dict)
    in_flight: list[str] = field(default_factory=list)
    # Recorded EPNs planned again because their source changed: EPN -> what changed.
    changed: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [
            f"{len(self.new_partitions)} new EPN(s)",
            f"{len(self.repatriate)} to repatriate",
            f"{len(self.alert)} to alert",
            f"{len(self.held_back)} held back",
        ]
        if self.in_flight:
            parts.append(f"{len(self.in_flight)} in flight")
        text = ", ".join(parts)
        if self.changed:
            text += "; re-syncing " + "; ".join(f"{epn} ({why})" for epn, why in list(self.changed.items())[:10])
        return text


def retry_delay(consecutive_failures: int, base: timedelta, cap: timedelta = timedelta(hours=24)) -> timedelta:
    """Exponential backoff: base, 2*base, 4*base, ... never more than cap."""
    if consecutive_failures <= 0:
        return timedelta(0)
    return min(cap, base * (2 ** min(consecutive_failures - 1, 16)))


def visits_hold(visits: Sequence[Visit], malformed: str, now: datetime) -> str | None:
    """Why an EPN's visits say that its data may still grow, or None once they say its beamtime is over.

    `malformed` is why the portal's malformed visits of the EPN were skipped (VisitsAnswer.malformed),
    "" when there were none. A malformed visit holds its EPN back as a running visit does: its end
    cannot be read, so the EPN's other visits cannot say that the beamtime is over, and an EPN
    synced and recorded early would never fetch its later data."""
    if malformed:
        return (
            f"the portal sent a malformed visit of it, so whether its beamtime is over is unknown: {malformed}; "
            "held back until the portal sends that visit whole"
        )
    running = [v for v in visits if not v.has_ended(now)]
    if running:
        return f"visit still running (ends {max(v.end_time for v in running).isoformat()})"
    return None


def plan_cycle(
    *,
    visits: Iterable[Visit],
    on_sftp: Iterable[str],
    known_partitions: Iterable[str],
    repatriated: Iterable[str],
    alerted: Iterable[str],
    epn_cap_map: Mapping[str, str],
    now: datetime,
    dry_run: bool,
    history: Mapping[str, RunHistory] | None = None,
    alert_in_flight: Iterable[str] = (),
    retry_base: timedelta = timedelta(minutes=30),
    malformed: Mapping[str, str] | None = None,
) -> CyclePlan:
    """`malformed`: the visits the portal sent malformed (VisitsAnswer.malformed), EPN -> why;
    their EPNs are held back. One whose EPN cannot be read holds nothing back and is named."""
    history = history or {}
    malformed = malformed or {}
    unreadable = {key: why for key, why in malformed.items() if not is_valid_epn(key)}
    visits_by_epn: dict[str, list[Visit]] = {}
    for visit in visits:
        if is_valid_epn(visit.epn):
            visits_by_epn.setdefault(visit.epn, []).append(visit)
    on_sftp = {e for e in on_sftp if is_valid_epn(e)}
    known = set(known_partitions)
    repatriated = set(repatriated)
    skip_alert = set(alerted) | set(alert_in_flight)

    plan = CyclePlan()
    plan.new_partitions = sorted((on_sftp | visits_by_epn.keys()) - known)

    for epn in sorted(on_sftp | visits_by_epn.keys() | (malformed.keys() - unreadable.keys())):
        if project_for(epn, epn_cap_map) is None:
            if epn in on_sftp and epn not in skip_alert:
                plan.alert.append(epn)
            continue
        if epn in repatriated:
            continue
        reason = _hold_reason(
            visits_by_epn.get(epn, []),
            malformed.get(epn, ""),
            epn in on_sftp,
            history.get(epn),
            now,
            dry_run,
            retry_base,
        )
        if reason is None:
            plan.repatriate.append(epn)
        elif reason:
            plan.held_back[epn] = reason
    for key, why in unreadable.items():
        # No EPN to hold back: named at every tick (the portal client logs it once), the operator's to chase.
        plan.held_back[key] = f"the portal sent a malformed visit, skipped: {why}"
    return plan


def _hold_reason(
    visits: list[Visit],
    malformed: str,
    on_sftp: bool,
    last: RunHistory | None,
    now: datetime,
    dry_run: bool,
    retry_base: timedelta,
) -> str | None:
    """Why a mapped EPN waits, None when it is due, "" when there is simply nothing to do."""
    if not visits and not malformed:
        return "no visit in the portal within visit-day-range"
    held = visits_hold(visits, malformed, now)
    if held:
        return held
    if not on_sftp:
        return "no folder on the SFTP host yet"
    if last is None:
        return None
    if last.status.in_flight:
        return ""
    if last.status.succeeded:
        # A real success lands in ignore.yml; one that is not there was a dry-run
        # (do not repeat it every cycle) or was removed by an admin to force a re-sync.
        return "" if dry_run else None
    wait = retry_delay(last.consecutive_failures, retry_base)
    if last.ended_at is not None and now < last.ended_at + wait and last.status is Outcome.EMPTY:
        return (
            f"its folder on the SFTP host held no files at the last {last.consecutive_failures} look(s); "
            f"looking again after {(last.ended_at + wait).isoformat(timespec='seconds')}"
        )
    if last.ended_at is not None and now < last.ended_at + wait:
        return (
            f"last {last.consecutive_failures} run(s) failed; retrying after "
            f"{(last.ended_at + wait).isoformat(timespec='seconds')}"
        )
    return None
