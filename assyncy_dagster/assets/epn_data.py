"""epn_data: one experiment's files, brought home and verified."""

import time
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
from pydantic import Field

from ..epn import InvalidEpnError, UnmappedEpnError, destination_for, validate_epn
from ..partitions import epn_partitions
from ..portal import Visit
from ..resources.settings import AssyncyConfigResource
from ..resources.sftp import SftpResource
from ..rsync import RsyncError, TransferStats, compare_manifests, local_manifest
from ..state import add_epns
from .visits import partition_epn

CHECK_NAME = "matches_source"
DRY_RUN_MODE = "DRY-RUN: nothing copied"


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


def _mib_per_second(size: int, seconds: float) -> float:
    return round(size / (1024 * 1024) / seconds, 2) if seconds > 0 else 0.0


@dg.asset(
    partitions_def=epn_partitions,
    group_name="repatriation",
    pool="rsync",
    kinds={"rsync"},
)
def epn_data(
    context: dg.AssetExecutionContext,
    config: EpnDataConfig,
    portal_visits: list[dict],
    sftp: SftpResource,
    assyncy_config: AssyncyConfigResource,
) -> dg.MaterializeResult:
    """The EPN's data at `<destination-root-path>/<project>/<epn>/data/`, pulled from the
    SFTP host with rsync over SSH.

    Only a real transfer that the `matches_source` check then verifies counts:
    only then is the EPN appended to ignore.yml (`previouslySynched`). A dry-run
    (`execute: false`) writes nothing and says so in its metadata.
    """
    epn = partition_epn(context)
    settings = assyncy_config.settings()
    try:
        destination = destination_for(epn, settings.epn_cap_map, settings.destination_root_path)
    except (UnmappedEpnError, InvalidEpnError) as exc:
        raise dg.Failure(description=str(exc)) from None

    visits = [Visit.from_dict(v) for v in portal_visits]
    now = datetime.now(timezone.utc)
    running = [v for v in visits if not v.has_ended(now)]
    if running and not config.allow_running_visit:
        ends = max(v.end_time for v in running).isoformat()
        raise dg.Failure(
            description=f"EPN {epn}: the visit has not ended (ends {ends}); its data may still grow. "
            "Set allow_running_visit: true in the run config to sync it anyway."
        )

    dry_run = not (settings.execute if config.execute is None else config.execute)
    mode = DRY_RUN_MODE if dry_run else "real transfer"
    context.log.info(f"EPN {epn}: {mode} to {destination}")

    def log_progress(update) -> None:
        context.log.info(f"EPN {epn}: {update}")

    started = time.monotonic()
    try:
        result = sftp.client(logger=context.log).transfer(epn, destination, dry_run=dry_run, on_progress=log_progress)
    except RsyncError as exc:
        raise dg.Failure(
            description=f"EPN {epn}: {exc}",
            metadata={"rsync_exit_code": exc.exit_code, "destination": str(destination)},
        ) from None
    duration = time.monotonic() - started
    stats = result.stats or TransferStats()
    metadata: dict[str, object] = {
        "mode": mode,
        "dry_run": dry_run,
        "destination": dg.MetadataValue.path(str(destination)),
        "rsync_exit_code": result.exit_code,
        "files_transferred": stats.files_transferred,
        "bytes_transferred": stats.bytes_transferred,
        "duration_seconds": round(duration, 3),
        "throughput_mib_per_second": _mib_per_second(stats.bytes_transferred, duration),
    }
    if dry_run:
        context.log.warning(f"EPN {epn}: dry-run only (execute: false); nothing copied, not marked repatriated")
    else:
        files = local_manifest(destination)
        metadata.update({"files_at_destination": len(files), "bytes_at_destination": sum(files.values())})
    return dg.MaterializeResult(metadata=metadata)


def _latest_was_dry_run(instance: dg.DagsterInstance, epn: str) -> bool:
    """Whether this partition's latest materialisation was a dry-run (read from its metadata,
    so the check also runs on its own, e.g. to re-verify an EPN from the UI)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("epn_data"), asset_partitions=[epn]), limit=1
    ).records
    if not records:
        return False
    value = records[0].asset_materialization.metadata.get("dry_run")
    return bool(getattr(value, "value", value))


@dg.asset_check(
    asset=epn_data,
    name=CHECK_NAME,
    blocking=True,
    partitions_def=epn_partitions,
    description="Every file the SFTP host holds for this EPN (hidden files excluded, .info kept) is at "
    "the destination with the same size. Passing after a real transfer records the EPN in ignore.yml.",
)
def epn_data_matches_source(
    context: dg.AssetCheckExecutionContext,
    sftp: SftpResource,
    assyncy_config: AssyncyConfigResource,
) -> dg.AssetCheckResult:
    epn = validate_epn(context.partition_key)
    if _latest_was_dry_run(context.instance, epn):
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description="dry-run: nothing was copied, so nothing was verified",
        )
    settings = assyncy_config.settings()
    destination = destination_for(epn, settings.epn_cap_map, settings.destination_root_path)
    try:
        expected = sftp.client(logger=context.log).source_manifest(epn)
    except RsyncError as exc:
        raise dg.Failure(description=f"EPN {epn}: cannot list the source to verify: {exc}") from None
    actual = local_manifest(destination)
    diff = compare_manifests(expected, actual)
    metadata = {
        "source_files": len(expected),
        "source_bytes": sum(expected.values()),
        "missing": len(diff.missing),
        "size_mismatch": len(diff.size_mismatch),
    }
    if not diff.ok:
        context.log.error(f"EPN {epn}: destination does not match the source: {diff.summary()}")
        return dg.AssetCheckResult(passed=False, description=diff.summary(), metadata=metadata)
    if add_epns(Path(settings.ignore), [epn]):
        context.log.info(f"EPN {epn}: verified; recorded as repatriated in {settings.ignore}")
    return dg.AssetCheckResult(passed=True, metadata=metadata)
