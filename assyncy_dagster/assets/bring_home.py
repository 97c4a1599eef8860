"""The repatriation of one EPN: transfer, verify, make durable, write the manifest, record.

What "home" means is decided in one place, transfer/verification.py; this module asks it. Then, in
this order: the data is flushed to disk, the EPN's checksum manifest is written beside `data/`
(transfer/bag.py), the materialisation is reported with the manifest's digest as its data version,
and only then is the EPN appended to ignore.yml. The batch loop around it is assets/repatriation.py.
"""

import contextlib
import functools
import gc
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import NamedTuple

import dagster as dg

from ..claims import claims
from ..config import Settings
from ..domain import Visit
from ..epn import InvalidEpnError, UnmappedEpnError, base_number, destination_for, project_folder, validate_epn
from ..fixity import clear_findings, findings_for, findings_path, mark_for_refetch
from ..planning import visits_hold
from ..run_records import EPN_DATA, last_verified
from ..state import add_epns
from ..transfer import RsyncClient, RsyncError, TransferStats
from ..transfer.bag import Flush, Recorded, make_manifest, manifest_name, read_manifest
from ..transfer.commands import CHECKSUM_ALGORITHMS
from ..transfer.homewalk import HomeWalk
from ..transfer.manifests import Tree, census, tree_digest, with_checksums
from ..transfer.verification import Verdict, verify_tree

CHECK_NAME = "matches_source"
DRY_RUN_MODE = "DRY-RUN: nothing copied"
PROGRESS_AFTER_SECONDS = 5.0
# Dagster's tag for a materialisation's data version (shown as such in the UI).
DATA_VERSION_TAG = "dagster/data_version"
SHOWN_CHANGES = 20


class EpnFailed(Exception):
    """One EPN could not be brought home; the others in the step carry on."""


class EpnEmpty(Exception):
    """The EPN's folder holds no files (yet): nothing to record, held back, not a failure."""


def still_claimed(instance: dg.DagsterInstance, epn: str, run_id: str) -> None:
    """Raise EpnFailed unless run `run_id` still holds the EPN's claim (claims.py). A step stopped
    or cut off past the heartbeat limit after its rsync ended finds, once resumed, its run ended
    and the EPN perhaps another run's: it records nothing, so no EPN is recorded twice."""
    holder = claims(instance, [epn]).get(epn)
    if holder != run_id:
        now = f"run {holder} holds it now" if holder else "it was freed"
        raise EpnFailed(
            f"EPN {epn}: verified but not recorded: this run lost its claim on it ({now}) while its step "
            "was stopped or cut off past the heartbeat limit; the run holding it brings it home"
        )


def _mib_per_second(size: int, seconds: float) -> float:
    return round(size / (1024 * 1024) / seconds, 2) if seconds > 0 else 0.0


def check_evaluation(
    epn: str, passed: bool, *, description: str | None = None, metadata=None
) -> dg.AssetCheckEvaluation:
    return dg.AssetCheckEvaluation(
        asset_key=EPN_DATA,
        check_name=CHECK_NAME,
        passed=passed,
        partition=epn,
        description=description,
        metadata=metadata or {},
        severity=dg.AssetCheckSeverity.ERROR,
    )


class _SourceSide(NamedTuple):
    """The source's side of an EPN's verification: the tree rsync listed, that tree with the
    checksums recorded at home filled in, and its digest (manifests.tree_digest; "" in a dry-run)."""

    listed: Tree
    source: Tree
    digest: str


def recorded_tree(epn_folder: Path, settings: Settings, recorded: Recorded | None = None) -> Tree:
    """The checksums recorded at home (`recorded`, else read now), if made with the algorithm in use."""
    recorded = recorded or read_manifest(epn_folder)
    return recorded.tree if recorded is not None and recorded.algorithm == settings.checksum_algorithm else {}


def check_metadata(verdict: Verdict) -> dict[str, dg.MetadataValue | int]:
    metadata: dict[str, dg.MetadataValue | int] = {
        "source_files": verdict.source_files,
        "source_bytes": verdict.source_bytes,
        "source_symlinks": verdict.source_symlinks,
        "files_verified_by_content": verdict.verified_by_content,
        "files_verified_by_size_only": verdict.verified_by_size_only,
        "missing": len(verdict.diff.missing),
        "size_mismatch": len(verdict.diff.size_mismatch),
        "mtime_mismatch": len(verdict.diff.mtime_mismatch),
        "symlinks_missing": len(verdict.diff.missing_links),
        "folders_missing": len(verdict.diff.missing_dirs),
    }
    if not verdict.diff.ok:
        metadata["problems"] = _problem_table(verdict)
    return metadata


def _problem_table(verdict: Verdict) -> dg.TableMetadataValue:
    """The check's failures as a table in the UI: the first 100 missing or different entries."""
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord({"path": path, "problem": problem, "source_bytes": want, "destination_bytes": have})
            for path, problem, want, have in verdict.diff.problems(100)
        ],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("path", "string"),
                dg.TableColumn("problem", "string"),
                dg.TableColumn("source_bytes", "int"),
                dg.TableColumn("destination_bytes", "int"),
            ]
        ),
    )


def _project_folder_problem(epn: str, destination: Path, settings: Settings) -> str | None:
    """Why the EPN's project folder is missing, or None: a typo in epn_cap_map must not make a new project."""
    folder = project_folder(destination)
    if settings.create_project_folders or folder.is_dir():
        return None
    return (
        f"EPN {epn}: the project folder {folder} does not exist under destination-root-path "
        f"(epn_cap_map maps {base_number(epn)!r} to {folder.name!r}); "
        "check epn_cap_map for a typo, create the folder, or set create-project-folders: true"
    )


def _remove_leaving_links(verdict: Verdict, destination: Path) -> None:
    """The links rsync just made that resolve outside the EPN are removed, so nothing at
    home points outside it (their data cannot be fetched: see transfer/commands.py)."""
    for path in verdict.leaving:
        with contextlib.suppress(FileNotFoundError):
            if (destination / path).is_symlink():
                (destination / path).unlink()


def _change_since(previous: Mapping | None, source: Tree, sent: Sequence[tuple[str, bool]], digest: str) -> str:
    """What changed at the source since the EPN's last verified sync, naming the files fetched again."""
    if previous is None:
        return "first verified sync"
    if previous.get("source_digest") == digest:
        return "no change at the source since the last verified sync"
    held = census(source)
    files, size = held.files, held.bytes
    when = datetime.fromtimestamp(previous["timestamp"], UTC).isoformat(timespec="seconds")
    text = (
        f"the source changed since the last verified sync ({when}): {files - int(previous.get('source_files', 0)):+d} "
        f"file(s), {size - int(previous.get('source_bytes', 0)):+d} bytes"
    )
    rewritten = [path for path, new in sent if not new]
    added = [path for path, new in sent if new]
    for label, paths in (("fetched again (changed at the source)", rewritten), ("new", added)):
        if paths:
            more = f" and {len(paths) - SHOWN_CHANGES} more" if len(paths) > SHOWN_CHANGES else ""
            text += f"; {label}: {', '.join(paths[:SHOWN_CHANGES])}{more}"
    return text


@functools.cache
def _our_version() -> str:
    try:
        return version("assyncy-dagster")
    except PackageNotFoundError:
        return "unknown"


@contextlib.contextmanager
def start_up_heap_set_aside() -> Iterator[None]:
    """For one step, the objects that exist when it begins (Dagster's, the code location's: about a
    million, all long-lived) are set aside from Python's cycle collector (gc.freeze), and given
    back when it ends (a Celery worker runs many steps). Otherwise each full collection in the
    step rescans them all: 0.11-0.14 s each, and one fell inside most no-op re-syncs of 10,000
    files, whose rsync takes 0.35 s."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextlib.contextmanager
def _cycle_collection_paused() -> Iterator[None]:
    """Python's cycle collector paused while one EPN's trees are built: they are hundreds of
    thousands of small tuples (itemized lines, the manifest at home, the walk), none in a
    cycle, and each collection would rescan them and the whole step process's heap
    (100,000 entries: 0.61 s with it, 0.32 s without). Reference counting still frees
    everything else; cycles made meanwhile are collected once the step ends."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        # What was made meanwhile is set aside too (gc.freeze), not scanned when the collector
        # resumes (4-6 ms for 10,000 entries); start_up_heap_set_aside gives it back.
        gc.freeze()
        if was_enabled:
            gc.enable()


def bag_info(epn: str, visits: Sequence[Visit], settings: Settings) -> dict[str, str]:
    """bag-info.txt's fields: what the EPN is and where and when it came from."""
    info = {
        "External-Identifier": f"EPN {epn}",
        "EPN": epn,
        "Proposal": base_number(epn),
        "Source-Organization": "Australian Synchrotron",
        "Source-Host": settings.host,
        "Bagging-Date": datetime.now(UTC).date().isoformat(),
        "Bagged-At": datetime.now(UTC).isoformat(timespec="seconds"),
        "Bag-Software-Agent": f"assyncy-dagster {_our_version()}",
    }
    if visits:
        info["Visit-Start"] = min(v.start_time for v in visits).isoformat()
        info["Visit-End"] = max(v.end_time for v in visits).isoformat()
    return info


def record_home(
    context,
    epn: str,
    settings: Settings,
    destination: Path,
    source: Tree,
    info: Mapping[str, str],
    *,
    flush: Flush | None = None,
    recorded: Recorded | None = None,
) -> dict[str, str | float]:
    """Make a verified EPN durable and write its manifest; returns the manifest's digest and what
    each took (metadata). Only after this may the EPN be recorded in ignore.yml. `flush`: the
    flush the caller began when rsync ended (bring_home); without one, it is made here.
    `recorded`: the manifest at home as read before the transfer, if it was."""
    flush = flush or Flush(destination)
    began = time.monotonic()
    epn_folder = destination.parent
    # Made while the flush runs (for 100,000 files, 0.2 s of the flush's 0.6 s); written once it is done.
    manifest = make_manifest(epn_folder, source, algorithm=settings.checksum_algorithm, info=info, recorded=recorded)
    made = time.monotonic() - began
    waited = flush.wait()
    flushed = time.monotonic()
    digest = manifest.write(epn_folder)
    for other in CHECKSUM_ALGORITHMS:  # ours, made with the algorithm used before: it no longer holds
        stale = epn_folder / manifest_name(other)
        if other != settings.checksum_algorithm and stale.is_file():
            stale.unlink()
            context.log.info(f"EPN {epn}: removed {stale.name}, made with the checksum algorithm used before")
    return {
        "manifest_digest": digest,
        "flush_seconds": round(flush.seconds, 3),  # the flush's own time, mostly beside the verification
        "flush_wait_seconds": round(waited, 3),  # what the step waited for it after verifying and making the manifest
        "manifest_seconds": round(made + time.monotonic() - flushed, 3),  # made, then written
    }


def bring_home(
    context,
    epn: str,
    settings: Settings,
    client: RsyncClient,
    visits: list[Visit],
    *,
    dry_run: bool,
    allow_running_visit: bool,
    malformed: str = "",
    full_checksum: bool = False,
) -> Iterator[dg.AssetMaterialization | dg.AssetObservation | dg.AssetCheckEvaluation]:
    """Transfer and verify one EPN, yielding its materialisation and check result. `malformed`:
    why the portal's malformed visits of it were skipped (they hold it back, as a running one does).
    Raises EpnFailed when it cannot be brought home, EpnEmpty when there is nothing to fetch."""
    try:
        destination = destination_for(validate_epn(epn), settings.epn_cap_map, settings.destination_root_path)
    except (UnmappedEpnError, InvalidEpnError) as exc:
        raise EpnFailed(str(exc)) from None
    if not visits and not malformed:
        raise EpnFailed(
            f"EPN {epn}: the portal has no visit for it in the last {settings.visit_day_range} days "
            "(check the EPN, or raise visit-day-range in config.yml)"
        )
    held = visits_hold(visits, malformed, datetime.now(UTC))  # the sensor's rule, asked, not restated
    if held and not allow_running_visit:
        raise EpnFailed(
            f"EPN {epn}: {held}; its data may still grow. "
            "Set allow_running_visit: true in the run config to sync it anyway."
        )
    problem = _project_folder_problem(epn, destination, settings)
    if problem:
        raise EpnFailed(problem)
    if settings.create_project_folders and not dry_run:
        # Not left to rsync's --mkpath: two EPNs of a new project copied at once would both make it,
        # and the slower rsync fail ("mkdir ... failed: File exists").
        project_folder(destination).mkdir(parents=True, exist_ok=True)

    mode = DRY_RUN_MODE if dry_run else "real transfer"
    started = time.monotonic()

    def log_progress(update) -> None:
        # Every event costs a database write: a transfer that ends within the first
        # progress interval is summed up by the line after it instead.
        if time.monotonic() - started >= PROGRESS_AFTER_SECONDS:
            context.log.info(f"EPN {epn}: {update}")

    fixity_findings = findings_path(context.instance.storage_directory())
    if not dry_run:  # the files the last fixity audit found damaged: rsync's quick check sends them again
        mark_for_refetch(destination, findings_for(fixity_findings, epn))
    recorded: Recorded | None = None
    previous: Mapping | None = None
    read_before = False

    walk = HomeWalk(destination)  # closed by the `with` below
    prepared: list[_SourceSide] = []

    def source_side(listed: Tree) -> _SourceSide:
        # Files rsync did not send in this run are the files whose checksums were recorded before.
        source = with_checksums(listed, recorded_tree(destination.parent, settings, recorded).items())
        return _SourceSide(listed, source, "" if dry_run else tree_digest(source))

    def when_listed(listed: Tree) -> None:
        # rsync has reported every entry and now closes its connection (about 20 ms): for a re-sync,
        # the source's side of the verification is made meanwhile, kept if nothing is added to the
        # tree after. After a first copy it is made beside the flush instead (0.6 s for 100,000
        # files, where the step waits), not before the flush starts (0.1 s for them).
        if read_before and walk.walked_before:
            prepared.append(source_side(dict(listed)))

    def while_connecting() -> None:
        # What does not depend on the transfer is read while ssh sets up its connection (a
        # quarter of a second, idle here): the manifest at home (only this run, holding the
        # EPN's claim, writes it), the EPN's last verified sync, this package's version for
        # bag-info.txt (looked up once per process: 4 ms), and the walk of home, watched from
        # then on so that rsync's changes are seen (transfer/homewalk.py).
        nonlocal recorded, previous, read_before
        recorded = read_manifest(destination.parent)
        previous = last_verified(context.instance, epn)
        _our_version()
        read_before = True
        if not dry_run:
            walk.begin()

    with _cycle_collection_paused(), walk:
        try:
            result = client.transfer(
                epn,
                destination,
                dry_run=dry_run,
                on_progress=log_progress,
                streams=settings.transfer_streams,
                streams_min_mib=settings.transfer_streams_min_mib,
                full_checksum=full_checksum,
                while_connecting=while_connecting,
                when_listed=when_listed,
                when_folder_done=None if dry_run else walk.list_done,  # a first copy: listed as rsync goes
            )
        except RsyncError as exc:
            raise EpnFailed(f"EPN {epn}: {exc}") from None
        duration = time.monotonic() - started
        # The write-back of the copy starts now, beside the reading of the manifest, the walk and the
        # verification; record_home waits for it before anything is recorded.
        flush = None if dry_run else Flush(destination)
        if not read_before:
            while_connecting()
        reported = result.tree or {}
        side = prepared[0] if prepared and prepared[0].listed == reported else source_side(reported)
        source = side.source
        home = {} if dry_run else walk.tree()  # walked once: verified, then counted
        verdict = verify_tree(epn, source, home)
    if verdict.empty:
        raise EpnEmpty(f"{verdict.summary()}, held back and looked at again later")
    if verdict.refusals:
        if not dry_run:
            _remove_leaving_links(verdict, destination)
        raise EpnFailed(verdict.summary())
    stats = result.stats or TransferStats()
    metadata: dict[str, dg.MetadataValue | str | int | float] = {
        "mode": mode,
        "dry_run": dry_run,
        "destination": dg.MetadataValue.path(str(destination)),
        "rsync_exit_code": result.exit_code,
        "streams": result.streams,
        "files_transferred": stats.files_transferred,
        "bytes_transferred": stats.bytes_transferred,
        "duration_seconds": round(duration, 3),
        "throughput_mib_per_second": _mib_per_second(stats.bytes_transferred, duration),
        "source_files": verdict.source_files,
        "source_bytes": verdict.source_bytes,
        "source_symlinks": verdict.source_symlinks,
    }
    if dry_run:
        # An observation, not a materialisation: an `epn_data` materialisation always means
        # data at the destination, so the UI never shows a dry-run's partition as home.
        context.log.warning(f"EPN {epn}: dry-run only (execute: false); nothing copied, not marked repatriated")
        yield dg.AssetObservation(asset_key=EPN_DATA, partition=epn, metadata=metadata)
        return
    source_digest = side.digest
    at_home = census(home)
    metadata.update(
        {
            "files_at_destination": at_home.files,
            "bytes_at_destination": at_home.bytes,
            "verified": verdict.passed,
            "files_verified_by_content": verdict.verified_by_content,
            "files_verified_by_size_only": verdict.verified_by_size_only,
            "checksum_algorithm": settings.checksum_algorithm,
            "source_digest": source_digest,
            "change": _change_since(previous, source, result.sent, source_digest),
        }
    )
    if not verdict.passed:
        yield dg.AssetMaterialization(asset_key=EPN_DATA, partition=epn, metadata=metadata)
        yield check_evaluation(epn, False, description=verdict.summary(), metadata=check_metadata(verdict))
        context.log.error(f"EPN {epn}: destination does not match the source: {verdict.summary()}")
        raise EpnFailed(f"EPN {epn}: destination does not match the source after the transfer: {verdict.summary()}")
    recorded_home = record_home(
        context, epn, settings, destination, source, bag_info(epn, visits, settings), flush=flush, recorded=recorded
    )
    # The EPN's own time in the step: transfer, verification, flush and manifest (benchmarks
    # compare it with bare rsync); Dagster's event and tag writes come on top.
    recorded_home["home_seconds"] = round(time.monotonic() - started, 3)
    metadata["manifest"] = dg.MetadataValue.path(str(destination.parent / manifest_name(settings.checksum_algorithm)))
    metadata.update(recorded_home)
    still_claimed(context.instance, epn, context.run_id)  # the last look before anything is recorded
    yield dg.AssetMaterialization(
        asset_key=EPN_DATA,
        partition=epn,
        metadata=metadata,
        tags={DATA_VERSION_TAG: str(recorded_home["manifest_digest"])},
    )
    yield check_evaluation(epn, True, description=verdict.summary(), metadata=check_metadata(verdict))
    listed = add_epns(Path(settings.ignore), [epn])
    clear_findings(fixity_findings, epn)  # fetched again and verified: the audit's findings no longer hold
    streams = f" over {result.streams} streams" if result.streams > 1 else ""
    by_size = (
        f" ({verdict.verified_by_size_only} file(s) by size only: no checksum recorded)"
        if verdict.verified_by_size_only
        else ""
    )
    context.log.info(
        f"EPN {epn}: {stats.files_transferred} file(s), {stats.bytes_transferred} bytes copied to {destination} "
        f"in {duration:.1f} s{streams}; verified{by_size}"
        + (f"; recorded as repatriated in {settings.ignore}" if listed else "")
    )
