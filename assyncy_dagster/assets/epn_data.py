"""epn_data: one experiment's files, brought home and verified."""


import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
from pydantic import Field

from ..epn import InvalidEpnError, UnmappedEpnError, destination_for
from ..partitions import epn_partitions
from ..portal import Visit
from ..resources.settings import AssyncyConfigResource
from ..resources.sftp import SftpResource
from ..rsync import RsyncError, compare_manifests, local_manifest
from ..state import add_epns
from .visits import partition_epn

CHECK_NAME = "matches_source"


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


def _refuse(message: str) -> dg.Failure:
    return dg.Failure(description=message)


def _mib_per_second(size: int, seconds: float) -> float:
    return round(size / (1024 * 1024) / seconds, 2) if seconds > 0 else 0.0


@dg.asset(
    partitions_def=epn_partitions,
    group_name="repatriation",
    pool="rsync",
    kinds={"rsync"},
    check_specs=[
        dg.AssetCheckSpec(
            CHECK_NAME,
            asset="epn_data",
            blocking=True,
            partitions_def=epn_partitions,
            description="Every file the SFTP host holds for this EPN (hidden files excluded, .info kept) "
            "is at the destination with the same size.",
        )
    ],
)
def epn_data(
    context: dg.AssetExecutionContext,
    config: EpnDataConfig,
    portal_visits: list[dict],
    sftp: SftpResource,
    assyncy_config: AssyncyConfigResource,
) -> Iterator[dg.MaterializeResult]:
    """The EPN's data at `<destination-root-path>/<project>/<epn>/data/`, pulled from the
    SFTP host with rsync over SSH.

    Only a real transfer whose destination then matches the source listing counts:
    only then is the EPN appended to ignore.yml (`previouslySynched`). A dry-run
    (`execute: false`) writes nothing and is labelled as such in the metadata.
    """
    epn = partition_epn(context)
    settings = assyncy_config.settings()
    try:
        destination = destination_for(epn, settings.epn_cap_map, settings.destination_root_path)
    except (UnmappedEpnError, InvalidEpnError) as exc:
        raise _refuse(str(exc)) from None

    visits = [Visit.from_dict(v) for v in portal_visits]
    now = datetime.now(timezone.utc)
    running = [v for v in visits if not v.has_ended(now)]
    if running and not config.allow_running_visit:
        ends = max(v.end_time for v in running).isoformat()
        raise _refuse(
            f"EPN {epn}: the visit has not ended (ends {ends}); its data may still grow. "
            "Set allow_running_visit: true in the run config to sync it anyway."
        )

    dry_run = not (settings.execute if config.execute is None else config.execute)
    mode = "DRY-RUN: nothing copied" if dry_run else "real transfer"
    context.log.info(f"EPN {epn}: {mode} to {destination}")

    def log_progress(update) -> None:
        context.log.info(f"EPN {epn}: {update}")

    client = sftp.client(logger=context.log)
    started = time.monotonic()
    try:
        result = client.transfer(epn, destination, dry_run=dry_run, on_progress=log_progress)
    except RsyncError as exc:
        raise dg.Failure(
            description=f"EPN {epn}: {exc}",
            metadata={"rsync_exit_code": exc.exit_code, "destination": str(destination)},
        ) from None
    duration = time.monotonic() - started
    stats = result.stats
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
        yield dg.MaterializeResult(
            metadata=metadata,
            check_results=[
                dg.AssetCheckResult(
                    check_name=CHECK_NAME,
                    passed=False,
                    severity=dg.AssetCheckSeverity.WARN,
                    description="dry-run: nothing was copied, so nothing was verified",
                )
            ],
        )
        context.log.warning(f"EPN {epn}: dry-run only (execute: false); not marked repatriated")
        return

    expected = client.source_manifest(epn)
    actual = local_manifest(destination)
    diff = compare_manifests(expected, actual)
    metadata.update(
        {
            "files_at_destination": len(actual),
            "bytes_at_destination": sum(actual.values()),
        }
    )
    yield dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name=CHECK_NAME,
                passed=diff.ok,
                severity=dg.AssetCheckSeverity.ERROR,
                description=None if diff.ok else diff.summary(),
                metadata={
                    "source_files": len(expected),
                    "source_bytes": sum(expected.values()),
                    "missing": len(diff.missing),
                    "size_mismatch": len(diff.size_mismatch),
                },
            )
        ],
    )
    if not diff.ok:
        raise dg.Failure(description=f"EPN {epn}: destination does not match the source: {diff.summary()}")
    if add_epns(Path(settings.ignore), [epn]):
        context.log.info(f"EPN {epn}: verified; recorded as repatriated in {settings.ignore}")
