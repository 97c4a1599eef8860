"""repatriation_report: for every EPN, whether its data is home, and if not, why.

The facts come from every source of truth at once: the portal (visits within
`visit-day-range`), the SFTP host (its EPN folders), ignore.yml, the
destination, and the Dagster instance (runs, verified syncs, what epn_sensor
saw change, since when an EPN has been due). report.py decides each EPN's
state from them; report_files.py draws and writes the result.
"""

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg
from pydantic import Field

from ..config import Settings
from ..domain import Visit, visit_window, visits_by_epn
from ..due import read_due_since, stuck_since
from ..epn import InvalidEpnError, UnmappedEpnError, destination_for, is_valid_epn, project_for
from ..errors_of_runs import epn_last_error
from ..facts import FACTS_FILE, read_saved_facts
from ..fixity import findings_path, read_findings
from ..outcomes import Outcome
from ..planning import visits_hold
from ..portal.errors import PortalError
from ..report import (
    EpnFacts,
    Holding,
    Verified,
    backlog_by_day,
    bytes_by_week,
    counts_by_state,
    repair_selection,
    report_row,
)
from ..resources.portal import PortalResource
from ..resources.settings import AssyncyConfigResource
from ..resources.ssh_source import SshSourceResource
from ..run_records import EPN_DATA, epn_history, last_verified
from ..state import StateFileError, read_epns
from ..transfer import RsyncError, SshConfigError, local_tree
from ..transfer.manifests import census
from .epn_data import OWNER, epn_data
from .repatriation import dry_run_for

REPATRIATION_REPORT = dg.AssetKey("repatriation_report")
MAX_ERROR_CHARS = 500


@dataclass
class Sources:
    """What the outside world said, and how (for the metadata's `sources` line)."""

    visits: dict[str, list[Visit]]
    on_host: set[str] | None  # None: the SFTP host could not be listed, and no earlier listing is kept
    notes: list[str] = field(default_factory=list)
    malformed: dict[str, str] = field(default_factory=dict)  # the portal's malformed visits: EPN -> why


def _sensor_facts(instance: dg.DagsterInstance) -> dict:
    """What epn_sensor last learned (its facts file): visits, the host's folders, changed sources."""
    return read_saved_facts(Path(instance.storage_directory()) / FACTS_FILE)


def _cached_visits(cached: dict) -> list[Visit]:
    visits = []
    for raw in cached.get("visits") or []:
        try:
            visits.append(Visit.from_dict({**raw, "principal_scientist": None, "data_scientists": []}))
        except (KeyError, TypeError, ValueError):
            continue
    return visits


def ask_sources(
    settings: Settings, portal: PortalResource, sftp: SshSourceResource, log, now: datetime, cached: dict
) -> Sources:
    """Ask the portal (one request per equipment, with the principal scientists) and list the SFTP
    host; when either cannot be reached, fall back to what epn_sensor last heard from it, and say so."""
    since, until = visit_window(now, settings.visit_day_range)
    when = (
        datetime.fromtimestamp(cached["refreshed_at"], UTC).isoformat(timespec="minutes")
        if isinstance(cached.get("refreshed_at"), (int, float))
        else None
    )
    notes = []
    try:
        answer = portal.answer(since, until, logger=log)
        visits, malformed = answer.visits, answer.malformed
        notes.append(f"portal: {len(visits)} visit(s) within {settings.visit_day_range} days")
    except PortalError as exc:
        if when is None:
            raise dg.Failure(
                description=f"repatriation report: the portal cannot be asked and epn_sensor has "
                f"no earlier answer to use: {exc}"
            ) from None
        log.warning(f"repatriation report: the portal cannot be asked ({exc}); using epn_sensor's visits of {when}")
        visits = _cached_visits(cached)
        malformed = {str(k): str(v) for k, v in (cached.get("rejected") or {}).items()}
        notes.append(f"portal unavailable: visits as epn_sensor saw them at {when} (no scientists)")
    on_host: set[str] | None
    try:
        on_host = set(sftp.client(logger=log).list_epns())
        notes.append(f"SFTP host: {len(on_host)} EPN folder(s)")
    except (RsyncError, SshConfigError) as exc:
        if when is None:
            log.warning(f"repatriation report: the SFTP host cannot be listed: {exc}")
            on_host = None
            notes.append("SFTP host unavailable: whether each EPN is there is unknown")
        else:
            log.warning(
                f"repatriation report: the SFTP host cannot be listed ({exc}); using epn_sensor's listing of {when}"
            )
            on_host = set(cached.get("on_sftp") or [])
            notes.append(f"SFTP host unavailable: folders as epn_sensor saw them at {when}")
    valid_visits = (v for v in visits if is_valid_epn(v.epn))
    return Sources(visits_by_epn(valid_visits), on_host, notes, malformed)


def destination_epns(settings: Settings) -> set[str]:
    """EPN folders with a `data` folder under each mapped project folder of the destination."""
    found = set()
    for project in sorted(set(settings.epn_cap_map.values())):
        try:
            entries = list((settings.destination_root_path / project).iterdir())
        except OSError:
            continue
        for entry in entries:
            if (
                is_valid_epn(entry.name)
                and project_for(entry.name, settings.epn_cap_map) == project
                and (entry / "data").is_dir()
            ):
                found.add(entry.name)
    return found


def _holding(epn: str, settings: Settings, count: bool) -> Holding | None:
    """What the EPN's destination holds (the transfer's own filter), None when it does not exist.
    Without `count`, only whether it exists: walking every old EPN's files at each refresh would
    cost more than the report is worth."""
    try:
        path = destination_for(epn, settings.epn_cap_map, settings.destination_root_path)
    except (InvalidEpnError, UnmappedEpnError):
        return None
    if not path.is_dir():
        return None
    if not count:
        return Holding()
    tree = local_tree(path)
    held = census(tree)
    return Holding(held.files, held.bytes)


def last_attempt(instance: dg.DagsterInstance, epn: str) -> tuple[Outcome | None, str, str]:
    """The EPN's latest repatriation run: (what came of it, run id, error when it failed)."""
    history = epn_history(instance, epn)
    if history is None:
        return None, "", ""
    failed = history.status is Outcome.FAILED
    error = epn_last_error(instance, history.run_id, epn)[:MAX_ERROR_CHARS] if failed else ""
    return history.status, history.run_id, error


@dataclass(frozen=True)
class Syncs:
    """From epn_data's materialisations within the window: what each real sync copied, and when
    each EPN first had a verified sync."""

    copied: list[tuple[float, str, int]]  # (timestamp, EPN, bytes transferred)
    first_verified: dict[str, float]


def recent_syncs(instance: dg.DagsterInstance, since: float) -> Syncs:
    copied: list[tuple[float, str, int]] = []
    first_verified: dict[str, float] = {}
    cursor = None
    while True:
        page = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=EPN_DATA, after_timestamp=since),
            limit=1000,
            cursor=cursor,
            ascending=True,
        )
        for record in page.records:
            materialization = record.asset_materialization
            if materialization is None or not materialization.partition:
                continue
            epn = materialization.partition
            meta: dict[str, Any] = {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
            if meta.get("dry_run"):
                continue  # an older version recorded dry-runs as materialisations: nothing was copied
            copied.append((record.timestamp, epn, int(meta.get("bytes_transferred") or 0)))
            if meta.get("verified"):
                first_verified.setdefault(epn, record.timestamp)
        if not page.has_more:
            return Syncs(copied, first_verified)
        cursor = page.cursor


def _visit_fields(visits: list[Visit]) -> dict:
    if not visits:
        return {}
    first = min(visits, key=lambda v: v.start_time)
    return {
        "visit_start": first.start_time,
        "visit_end": max(v.end_time for v in visits),
        "equipment": ", ".join(sorted({str(v.equipment_id) for v in visits})),
        "principal_scientist": first.principal_scientist.full_name if first.principal_scientist else "",
    }


def gather_facts(
    instance: dg.DagsterInstance, settings: Settings, sources: Sources, cached: dict, syncs: Syncs, now: datetime
) -> Iterator[EpnFacts]:
    """One EpnFacts per EPN known to the portal, the SFTP host, the destination or ignore.yml.

    EPNs in the window (a visit within visit-day-range, a folder on the host, due, or a sync within
    the window) are looked at fully; older ones known only to ignore.yml or the destination get
    whether their destination exists, nothing more."""
    try:
        recorded = {e for e in read_epns(settings.ignore) if is_valid_epn(e)}
    except StateFileError as exc:
        raise dg.Failure(description=f"repatriation report: {exc}") from None
    on_host = sources.on_host
    due = read_due_since(instance)
    stuck = stuck_since(due, now, settings.stuck_after_hours)
    changed_by_epn = cached.get("changed")
    changed = changed_by_epn if isinstance(changed_by_epn, dict) else {}
    changed_seen_at = cached.get("refreshed_at") if isinstance(cached.get("refreshed_at"), (int, float)) else None
    synced = {epn for _, epn, _ in syncs.copied}
    findings = read_findings(findings_path(instance.storage_directory()))  # the last fixity audit's
    in_window = set(sources.visits) | {e for e in sources.malformed if is_valid_epn(e)}
    in_window |= (on_host or set()) | set(due) | synced
    everyone = in_window | recorded | destination_epns(settings)
    for epn in sorted(everyone):
        project = project_for(epn, settings.epn_cap_map)
        full = epn in in_window and project is not None
        attempt, run_id, error = last_attempt(instance, epn) if full else (None, "", "")
        found = last_verified(instance, epn) if full else None
        verified = (
            Verified(
                found["timestamp"],
                int(found.get("source_files") or 0),
                int(found.get("source_bytes") or 0),
                # A sync recorded before checksums counted none: all by size only.
                int(found.get("files_verified_by_size_only", found.get("source_files")) or 0),
            )
            if found
            else None
        )
        audited = findings.get(epn)
        yield EpnFacts(
            epn=epn,
            project=project,
            **_visit_fields(sources.visits.get(epn, [])),
            on_host=None if on_host is None else epn in on_host,
            recorded=epn in recorded,
            verified=verified,
            destination=_holding(epn, settings, count=full) if project is not None else None,
            attempt=attempt,
            run_id=run_id,
            error=error,
            changed=str(changed.get(epn) or ""),
            changed_seen_at=changed_seen_at,
            due_since=due.get(epn),
            stuck=epn in stuck,
            held=visits_hold(sources.visits.get(epn, []), sources.malformed.get(epn, ""), now) or "",
            damaged=tuple(audited.problems()) if audited else (),
            audited_at=audited.audited_at if audited else None,
        )


def backlog_inputs(facts: Iterable[EpnFacts], syncs: Syncs, now: datetime) -> list[tuple[datetime, float | None]]:
    """For the backlog plot: each mapped EPN whose visit has ended, with when it first came home
    (None: not yet). A recorded EPN with no verified sync in the window came home before it."""
    due = []
    for each in facts:
        if each.project is None or each.visit_end is None or each.visit_end > now:
            continue
        home_at = syncs.first_verified.get(each.epn)
        if home_at is None and each.recorded:
            continue
        due.append((each.visit_end, home_at))
    return due


class ReportConfig(dg.Config):
    """Run config of repatriation_report."""

    execute: bool | None = Field(
        default=None,
        description=(
            "true writes the report's CSV, PNG and HTML files; false is a dry-run's report (metadata "
            "only, no file written); unset follows config.yml's `execute`."
        ),
    )


@dg.asset(
    deps=[epn_data],
    group_name="repatriation",
    kinds={"pandas", "matplotlib"},
    owners=[OWNER],
    tags={"data": "report"},
)
def repatriation_report(
    context: dg.AssetExecutionContext,
    config: ReportConfig,
    portal: PortalResource,
    sftp: SshSourceResource,
    assyncy_config: AssyncyConfigResource,
) -> dg.MaterializeResult:
    """What is home, what is not and why: one row per EPN known to the portal (within
    visit-day-range), the SFTP host, the destination or ignore.yml, with its state (running,
    waiting, home, corrupt, partial, changed, unmapped, failed, stuck, not on host, dry-run only), files and
    bytes at the source (last verified sync) and at the destination, and the last error.

    The metadata shows the EPNs that need attention, totals per project and per state, and a plot
    of the bytes repatriated per project per week and of the backlog. The full table (CSV), the
    plot (PNG) and an HTML page are written to `report-dir` (default `reports` in DAGSTER_HOME),
    except in a dry-run (`execute: false`), which writes no file. Refreshed after every
    repatriation run that ends, and daily.
    """
    # pandas and matplotlib would cost every Dagster process that loads this code location (run
    # workers, the CLI, the daemon's code server) 0.8 s of CPU at start (2.5 s where no bytecode is
    # compiled): they are loaded only to build a report.
    from ..report_files import (
        ReportWriteError,
        attention_markdown,
        html_page,
        image_markdown,
        markdown_table,
        plot_png,
        report_frame,
        totals_by_project,
        totals_by_state,
        write_report,
    )

    started = time.monotonic()
    settings = assyncy_config.settings()
    instance = context.instance
    now = datetime.now(UTC)
    tz = ZoneInfo(settings.schedule_timezone)
    cached = _sensor_facts(instance)
    sources = ask_sources(settings, portal, sftp, context.log, now, cached)
    window_start = visit_window(now, settings.visit_day_range)[0]
    syncs = recent_syncs(instance, window_start.timestamp())
    facts = list(gather_facts(instance, settings, sources, cached, syncs, now))
    rows = [report_row(f, now, tz) for f in facts]
    frame = report_frame(rows)
    by_project, by_state = totals_by_project(frame), totals_by_state(frame)
    repair = repair_selection(rows)
    states = counts_by_state(rows)

    weekly = bytes_by_week(
        ((stamp, project_for(epn, settings.epn_cap_map) or "(unmapped)", size) for stamp, epn, size in syncs.copied),
        tz,
    )
    backlog = backlog_by_day(backlog_inputs(facts, syncs, now), now.astimezone(tz).date(), tz)
    generated = now.astimezone(tz)
    png = plot_png(weekly, backlog, generated)
    paths: dict[str, Path] = {}
    if dry_run_for(settings, config.execute):
        # A dry-run writes nothing outside the instance and the log files; the metadata still shows it all.
        written = "not written: a dry-run (execute: false) writes no file"
    else:
        try:
            page = html_page(frame, by_project, by_state, generated, repair)
            paths = write_report(settings.report_path(Path(instance.root_directory)), frame, png, page)
        except ReportWriteError as exc:
            raise dg.Failure(description=str(exc)) from None
        written = f"written to {paths['html']}"

    attention = len(frame) - states.get("home", 0)
    context.log.info(
        f"repatriation report: {len(frame)} EPN(s), {states.get('home', 0)} home, {attention} needing attention "
        f"({', '.join(f'{n} {s}' for s, n in states.items() if s != 'home') or 'none'}); "
        f"{written} in {time.monotonic() - started:.1f} s"
    )
    metadata: dict[str, dg.MetadataValue] = {
        "dagster/row_count": dg.MetadataValue.int(len(frame)),
        "epns": dg.MetadataValue.int(len(frame)),
        "home": dg.MetadataValue.int(states.get("home", 0)),
        "needing_attention": dg.MetadataValue.int(attention),
        "attention": dg.MetadataValue.md(attention_markdown(frame, repair)),
        "plot": dg.MetadataValue.md(
            image_markdown(png, "Bytes repatriated per project per week, and the backlog over time")
        ),
        "totals_by_state": dg.MetadataValue.md(markdown_table(by_state)),
        "totals_by_project": dg.MetadataValue.md(markdown_table(by_project)),
        **{kind: dg.MetadataValue.path(str(path)) for kind, path in paths.items()},
        "files": dg.MetadataValue.text(written),
        "sources": dg.MetadataValue.text("; ".join(sources.notes)),
    }
    if repair:
        metadata["repair_partitions"] = dg.MetadataValue.text(repair)
    return dg.MaterializeResult(metadata=metadata)
