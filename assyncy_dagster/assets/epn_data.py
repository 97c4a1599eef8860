"""epn_data: one experiment's files, brought home and verified.

One step may bring many EPNs home (a sensor batch, a UI backfill range). Each
EPN still gets its own `epn_data` materialisation and its own `matches_source`
result, reported per partition as soon as that EPN is done; one EPN's failure
is recorded for it alone and the step goes on with the next one.

What "home" means is decided in one place, transfer/verification.py, and every
path that records an EPN asks it: this step, the stand-alone `matches_source`
check, mxsync (which runs this step's code). Then, in this order: the data is
flushed to disk, the EPN's checksum manifest is written beside `data/`
(transfer/bag.py), the materialisation is reported with the manifest's digest
as its data version, and only then is the EPN appended to ignore.yml.
"""

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import dagster as dg
from pydantic import Field

from ..claims import WORKER_TAG, Heartbeat, claim_epn, release_epn, this_worker
from ..config import Settings
from ..domain import Visit, visit_window, visits_by_epn
from ..epn import InvalidEpnError, UnmappedEpnError, base_number, destination_for, validate_epn
from ..fixity import clear_findings, findings_for, findings_path, mark_for_refetch
from ..names import RSYNC_POOL
from ..partitions import epn_partitions
from ..planning import visits_hold
from ..portal import PortalError
from ..resources.portal import PortalResource
from ..resources.settings import AssyncyConfigResource
from ..resources.ssh_source import SshSourceResource
from ..run_records import Outcome, home_since_requested, last_verified, outcome_tags, tagged_epns
from ..state import add_epns, read_epns
from ..transfer import RsyncClient, RsyncError, SshConfigError, TransferStats, local_tree
from ..transfer.bag import flush_to_disk, manifest_name, read_manifest, write_manifest
from ..transfer.commands import CHECKSUM_ALGORITHMS
from ..transfer.manifests import Tree, files_of, total_bytes, tree_digest, with_checksums
from ..transfer.verification import Verdict, verify_tree
from .visits import PORTAL_VISITS, visit_metadata

EPN_DATA = dg.AssetKey("epn_data")
CHECK_NAME = "matches_source"
DRY_RUN_MODE = "DRY-RUN: nothing copied"
# A UI backfill of many EPNs runs this many per run: one process start-up and
# code load for them all, and still several runs to share out over `max-tasks`.
BACKFILL_EPNS_PER_RUN = 50
PROGRESS_AFTER_SECONDS = 5.0
OWNER = "team:research-data"
# 2: symlinks kept and checked, source digest recorded, dry-runs are observations.
# 3: content checksums (the sender's) in a manifest beside data/, mtimes compared, folders and
#    special files checked, links judged by where they resolve, data flushed before recording.
CODE_VERSION = "3"
# Dagster's tag for a materialisation's data version (shown as such in the UI).
DATA_VERSION_TAG = "dagster/data_version"
SHOWN_CHANGES = 20


class EpnDataConfig(dg.Config):
    """Per-run choices; the defaults follow config.yml."""

    allow_running_visit: bool = Field(
        default=False,
        description="Sync although the visit has not ended yet (the data may still grow).",
    )
    execute: bool | None = Field(
        default=None,
        description="true copies for real, false is an rsync dry-run; unset follows config.yml's `execute`.",
    )
    full_checksum: bool = Field(
        default=False,
        description="Read every file at both ends (rsync --checksum) so that each one gets a content "
        "checksum in the manifest, also those brought home earlier ('verified by size only'). Costs a "
        "full read of the EPN at the facility and at home.",
    )


class EpnFailed(Exception):
    """One EPN could not be brought home; the others in the step carry on."""


class EpnEmpty(Exception):
    """The EPN's folder holds no files (yet): nothing to record, held back, not a failure."""


def _mib_per_second(size: int, seconds: float) -> float:
    return round(size / (1024 * 1024) / seconds, 2) if seconds > 0 else 0.0


def _check_evaluation(
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


def _recorded_tree(epn_folder: Path, settings: Settings) -> Tree:
    """The checksums recorded at home, if they were made with the algorithm in use."""
    recorded = read_manifest(epn_folder)
    return recorded.tree if recorded is not None and recorded.algorithm == settings.checksum_algorithm else {}


def _check_metadata(verdict: Verdict) -> dict[str, dg.MetadataValue | int]:
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
    project_folder = destination.parent.parent  # <root>/<project>/<epn>/data
    if settings.create_project_folders or project_folder.is_dir():
        return None
    return (
        f"EPN {epn}: the project folder {project_folder} does not exist under destination-root-path "
        f"(epn_cap_map maps {base_number(epn)!r} to {project_folder.name!r}); "
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
    files, size = len(files_of(source)), total_bytes(source)
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


def _bag_info(epn: str, visits: Sequence[Visit], settings: Settings) -> dict[str, str]:
    """bag-info.txt's fields: what the EPN is and where and when it came from."""
    try:
        ours = version("assyncy-dagster")
    except PackageNotFoundError:
        ours = "unknown"
    info = {
        "External-Identifier": f"EPN {epn}",
        "EPN": epn,
        "Proposal": base_number(epn),
        "Source-Organization": "Australian Synchrotron",
        "Source-Host": settings.host,
        "Bagging-Date": datetime.now(UTC).date().isoformat(),
        "Bagged-At": datetime.now(UTC).isoformat(timespec="seconds"),
        "Bag-Software-Agent": f"assyncy-dagster {ours}",
    }
    if visits:
        info["Visit-Start"] = min(v.start_time for v in visits).isoformat()
        info["Visit-End"] = max(v.end_time for v in visits).isoformat()
    return info


def _record_home(
    context,
    epn: str,
    settings: Settings,
    destination: Path,
    source: Tree,
    info: Mapping[str, str],
) -> dict[str, str | float]:
    """Make a verified EPN durable and write its manifest; returns the manifest's digest and what
    each took (metadata). Only after this may the EPN be recorded in ignore.yml."""
    started = time.monotonic()
    flush_to_disk(destination)
    flushed = time.monotonic()
    epn_folder = destination.parent
    digest = write_manifest(epn_folder, source, algorithm=settings.checksum_algorithm, info=info)
    for other in CHECKSUM_ALGORITHMS:  # ours, made with the algorithm used before: it no longer holds
        stale = epn_folder / manifest_name(other)
        if other != settings.checksum_algorithm and stale.is_file():
            stale.unlink()
            context.log.info(f"EPN {epn}: removed {stale.name}, made with the checksum algorithm used before")
    return {
        "manifest_digest": digest,
        "flush_seconds": round(flushed - started, 3),
        "manifest_seconds": round(time.monotonic() - flushed, 3),
    }


def _bring_home(
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
    try:
        result = client.transfer(
            epn,
            destination,
            dry_run=dry_run,
            on_progress=log_progress,
            streams=settings.transfer_streams,
            streams_min_mib=settings.transfer_streams_min_mib,
            full_checksum=full_checksum,
        )
    except RsyncError as exc:
        raise EpnFailed(f"EPN {epn}: {exc}") from None
    duration = time.monotonic() - started
    # Files rsync did not send in this run are the files whose checksums were recorded before.
    source = with_checksums(result.tree or {}, _recorded_tree(destination.parent, settings).items())
    home = {} if dry_run else local_tree(destination)  # walked once: verified, then counted
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
    source_digest = tree_digest(source)
    metadata.update(
        {
            "files_at_destination": len(files_of(home)),
            "bytes_at_destination": total_bytes(home),
            "verified": verdict.passed,
            "files_verified_by_content": verdict.verified_by_content,
            "files_verified_by_size_only": verdict.verified_by_size_only,
            "checksum_algorithm": settings.checksum_algorithm,
            "source_digest": source_digest,
            "change": _change_since(last_verified(context.instance, epn), source, result.sent, source_digest),
        }
    )
    if not verdict.passed:
        yield dg.AssetMaterialization(asset_key=EPN_DATA, partition=epn, metadata=metadata)
        yield _check_evaluation(epn, False, description=verdict.summary(), metadata=_check_metadata(verdict))
        context.log.error(f"EPN {epn}: destination does not match the source: {verdict.summary()}")
        raise EpnFailed(f"EPN {epn}: destination does not match the source after the transfer: {verdict.summary()}")
    recorded_home = _record_home(context, epn, settings, destination, source, _bag_info(epn, visits, settings))
    metadata["manifest"] = dg.MetadataValue.path(str(destination.parent / manifest_name(settings.checksum_algorithm)))
    metadata.update(recorded_home)
    yield dg.AssetMaterialization(
        asset_key=EPN_DATA,
        partition=epn,
        metadata=metadata,
        tags={DATA_VERSION_TAG: str(recorded_home["manifest_digest"])},
    )
    yield _check_evaluation(epn, True, description=verdict.summary(), metadata=_check_metadata(verdict))
    recorded = add_epns(Path(settings.ignore), [epn])
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
        + (f"; recorded as repatriated in {settings.ignore}" if recorded else "")
    )


def repatriate(
    context,
    epns: Sequence[str],
    *,
    settings: Settings,
    portal: PortalResource,
    sftp: SshSourceResource,
    dry_run: bool,
    allow_running_visit: bool,
    report_visits: bool,
    full_checksum: bool = False,
) -> Iterator[dg.AssetMaterialization | dg.AssetObservation | dg.AssetCheckEvaluation]:
    """Bring `epns` home one after another, in this step's single `rsync` pool slot.

    Yields each EPN's own events as it completes and tags the run with each
    EPN's outcome (see run_records). Raises dg.Failure at the end naming every
    EPN that failed, so the run shows as failed while the others are home."""
    instance, run_id = context.instance, context.run_id
    # The heartbeat first: every claim's holder has one, and a worker killed outright is noticed
    # by its silence (claims.py). Whatever ends the step, no EPN stays tagged queued or running.
    with Heartbeat(instance, run_id, context.log):
        instance.add_run_tags(run_id, {WORKER_TAG: this_worker(), **outcome_tags(epns, Outcome.QUEUED)})
        try:
            since, until = visit_window(datetime.now(UTC), settings.visit_day_range)
            try:
                answer = portal.answer(since, until, logger=context.log)
                by_epn = visits_by_epn(v for v in answer.visits if v.epn in set(epns))
                client = sftp.client(logger=context.log)
            except (PortalError, RsyncError, SshConfigError) as exc:  # a settings error names the setting
                instance.add_run_tags(run_id, outcome_tags(epns, Outcome.FAILED))
                raise dg.Failure(description=f"EPN(s) {', '.join(epns)}: cannot start: {exc}") from None

            failures: dict[str, str] = {}
            for epn in epns:
                visits = by_epn.get(epn, [])
                if report_visits and visits:
                    yield dg.AssetMaterialization(
                        asset_key=PORTAL_VISITS, partition=epn, metadata=visit_metadata(visits)
                    )
                why_not = _transferring_elsewhere(instance, epn, run_id, settings, dry_run, context.log)
                if why_not:
                    # Not this EPN's failure, and no second rsync into the same destination.
                    context.log.warning(f"EPN {epn}: not started: {why_not}")
                    instance.add_run_tags(run_id, outcome_tags([epn], Outcome.SKIPPED))
                    continue
                try:
                    instance.add_run_tags(run_id, outcome_tags([epn], Outcome.RUNNING))
                    yield from _bring_home(
                        context,
                        epn,
                        settings,
                        client,
                        visits,
                        dry_run=dry_run,
                        allow_running_visit=allow_running_visit,
                        malformed=answer.malformed.get(epn, ""),
                        full_checksum=full_checksum,
                    )
                except EpnFailed as exc:
                    failures[epn] = str(exc)
                    context.log.error(str(exc))
                    instance.add_run_tags(run_id, outcome_tags([epn], Outcome.FAILED))
                    continue
                except (SshConfigError, OSError) as exc:  # a setting (key-file, known-hosts-file) or the destination
                    failures[epn] = f"EPN {epn}: {_named_cause(exc)}"
                    context.log.error(failures[epn])
                    instance.add_run_tags(run_id, outcome_tags([epn], Outcome.FAILED))
                    continue
                except EpnEmpty as exc:
                    context.log.warning(str(exc))
                    instance.add_run_tags(run_id, outcome_tags([epn], Outcome.EMPTY))
                    continue
                finally:
                    release_epn(instance, epn, run_id)
                instance.add_run_tags(run_id, outcome_tags([epn], Outcome.DRY_RUN if dry_run else Outcome.HOME))
            if failures:
                if len(epns) == 1:
                    description = next(iter(failures.values()))
                else:
                    description = f"{len(failures)} of {len(epns)} EPN(s) failed; the others are home.\n" + "\n".join(
                        failures.values()
                    )
                raise dg.Failure(description=description, metadata={"errors": dg.MetadataValue.json(failures)})
        finally:
            _fail_unsettled(instance, run_id)


def _transferring_elsewhere(
    instance: dg.DagsterInstance, epn: str, run_id: str, settings: Settings, dry_run: bool, log
) -> str | None:
    """Take this run's exclusive claim on the EPN (claims.py) before any rsync into it, or say
    why not: another run holds it (e.g. one launched from the UI while a sensor batch waited; two
    rsyncs into one destination must never run at once, on one host or on many), or another run
    brought it home after this one was requested. The caller gives the claim back."""
    holder = claim_epn(instance, epn, run_id, log)
    if holder is not None:
        return f"run {holder} is transferring it right now"
    done = None if dry_run or epn not in read_epns(settings.ignore) else home_since_requested(instance, epn, run_id)
    if done is not None:
        release_epn(instance, epn, run_id)
        return f"run {done} brought it home after this run was requested"
    return None


def _named_cause(exc: OSError | SshConfigError) -> str:
    """An OSError names the path and what failed; the admin is told where to look."""
    if isinstance(exc, SshConfigError):
        return str(exc)
    return f"{exc.strerror or exc} ({exc.filename or 'no file named'}): check destination-root-path and its permissions"


def _fail_unsettled(instance: dg.DagsterInstance, run_id: str) -> None:
    """Tag `failed` every EPN of the run still `queued` or `running` when the step ends (an error
    no EPN's handling caught, an interruption): none stays in flight after its run."""
    run = instance.get_run_by_id(run_id)
    left = [
        e for e, o in tagged_epns(run.tags if run else {}).items() if o in (Outcome.QUEUED.value, Outcome.RUNNING.value)
    ]
    if left:
        instance.add_run_tags(run_id, outcome_tags(left, Outcome.FAILED))


def repatriate_as_configured(
    context,
    epns: Sequence[str],
    config: EpnDataConfig,
    portal: PortalResource,
    sftp: SshSourceResource,
    assyncy_config: AssyncyConfigResource,
    *,
    report_visits: bool,
) -> Iterator[dg.AssetMaterialization | dg.AssetObservation | dg.AssetCheckEvaluation]:
    """`repatriate` with the run's choices (EpnDataConfig), after checking every EPN name:
    a partition key or a run-config entry reaches paths and commands."""
    try:
        checked = list(dict.fromkeys(validate_epn(epn) for epn in epns))
    except InvalidEpnError as exc:
        raise dg.Failure(description=str(exc)) from None
    settings = assyncy_config.settings()
    yield from repatriate(
        context,
        checked,
        settings=settings,
        portal=portal,
        sftp=sftp,
        dry_run=dry_run_for(settings, config.execute),
        allow_running_visit=config.allow_running_visit,
        report_visits=report_visits,
        full_checksum=config.full_checksum,
    )


def dry_run_for(settings: Settings, execute: bool | None) -> bool:
    return not (settings.execute if execute is None else execute)


@dg.asset(
    partitions_def=epn_partitions,
    group_name="repatriation",
    pool=RSYNC_POOL,
    kinds={"rsync"},
    owners=[OWNER],
    tags={"data": "raw-experiment", "source": "synchrotron"},
    # Bump when what a materialisation means changes (flags, what is verified), so
    # the UI shows which EPNs were brought home by an older version.
    code_version=CODE_VERSION,
    deps=[PORTAL_VISITS],
    # Each EPN is reported as its own partition's materialisation below, never
    # one materialisation for a whole range; with no output, the separate
    # `matches_source` step is skipped in the same run (this step reports it).
    output_required=False,
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=BACKFILL_EPNS_PER_RUN),
)
def epn_data(
    context: dg.AssetExecutionContext,
    config: EpnDataConfig,
    portal: PortalResource,
    sftp: SshSourceResource,
    assyncy_config: AssyncyConfigResource,
):
    """The experiment's files at home: `<destination-root-path>/<project>/<epn>/data/`,
    pulled from the SFTP host with rsync over SSH.

    A materialised partition means the EPN's data is at the destination. Only
    when the `matches_source` check then passes is the EPN appended to
    ignore.yml (`previouslySynched`) and never fetched again (except for data
    that appears within `resync-days` of the visit's end). A dry-run
    (`execute: false`) copies nothing and is recorded as an observation, never
    a materialisation. A backfill runs up to 50 EPNs per run, one after
    another, each recorded on its own; a failed or missing partition is
    repaired by materialising it again.
    """
    yield from repatriate_as_configured(
        context, context.partition_keys, config, portal, sftp, assyncy_config, report_visits=False
    )


@dg.asset_check(
    asset=epn_data,
    name=CHECK_NAME,
    blocking=True,
    partitions_def=epn_partitions,
    description="The one verification (transfer/verification.py): the source holds files, no special file "
    "and no symlink resolving outside the EPN; every file (hidden files excluded, .info kept) is at the "
    "destination with the same size and mtime, every symlink with the same target, every folder; content "
    "checksums (the sender's, in the manifest beside data/) counted where known. Passing after a real "
    "transfer records the EPN in ignore.yml; failing lists the first 100 problems as a table.",
)
def epn_data_matches_source(
    context: dg.AssetCheckExecutionContext,
    sftp: SshSourceResource,
    assyncy_config: AssyncyConfigResource,
) -> dg.AssetCheckResult:
    """Run on its own (the `verify_epn_data` job): lists the source afresh and compares; a
    transfer step reports this check itself."""
    epn = validate_epn(context.partition_key)
    settings = assyncy_config.settings()
    destination = destination_for(epn, settings.epn_cap_map, settings.destination_root_path)
    client = sftp.client(logger=context.log)
    try:
        listed = client.source_tree(epn)
    except RsyncError as exc:
        raise dg.Failure(description=f"EPN {epn}: cannot list the source to verify: {exc}") from None
    source = with_checksums(listed, _recorded_tree(destination.parent, settings).items())
    verdict = verify_tree(epn, source, local_tree(destination))
    metadata = _check_metadata(verdict)
    if not verdict.passed:
        context.log.error(f"EPN {epn}: not verified: {verdict.summary()}")
        return dg.AssetCheckResult(passed=False, description=verdict.summary(), metadata=metadata)
    _record_home(context, epn, settings, destination, source, _bag_info(epn, [], settings))
    if add_epns(Path(settings.ignore), [epn]):
        context.log.info(f"EPN {epn}: verified; recorded as repatriated in {settings.ignore}")
    return dg.AssetCheckResult(passed=True, description=verdict.summary(), metadata=metadata)
