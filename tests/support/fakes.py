"""In-memory stand-ins for the unit tier: the SFTP host and the portal as fixed answers.

They replace the two resources that reach the outside world (`sftp`, `portal`) with
subclasses whose answers are canned, so that an asset runs its own code, with config.yml
read as in production, and nothing is started: no rsync, no ssh, no HTTP. They live with
the tests because production never chooses them (the real servers of the integration
tier are in assyncy_dagster/testing/).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import Field

from assyncy_dagster.portal import VisitsAnswer
from assyncy_dagster.resources.portal import PortalResource
from assyncy_dagster.resources.ssh_source import SshSourceResource
from assyncy_dagster.transfer import ProgressUpdate, RsyncClient, RsyncResult, TransferStats
from tests.support.helpers import visit_of


class CannedRsyncClient(RsyncClient):
    """An RsyncClient whose SFTP host is `files` (EPN -> relative path -> size): a transfer
    writes those files (not in a dry-run) and reports what rsync would have, exit code 0."""

    def __init__(self, files: Mapping[str, Mapping[str, int]]):  # no endpoint: nothing is reached
        self.files = {epn: dict(listing) for epn, listing in files.items()}
        self.transfers: list[tuple[str, Path, bool]] = []  # (epn, destination, dry_run) of each call

    def source_manifest(self, epn: str, links: dict[str, str] | None = None) -> dict[str, int]:
        return dict(self.files.get(epn, {}))

    def transfer(
        self,
        epn: str,
        destination: Path,
        *,
        dry_run: bool,
        on_progress: Callable[[ProgressUpdate], None] | None = None,
        extra_args: Sequence[str] = (),
        streams: int = 1,
        streams_min_mib: float = 1024,
    ) -> RsyncResult:
        self.transfers.append((epn, destination, dry_run))
        listing = self.source_manifest(epn)
        if not dry_run:
            for relative, size in listing.items():
                path = destination / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"x" * size)
        total = sum(listing.values())
        stats = TransferStats(
            files_transferred=len(listing),
            bytes_transferred=total,
            total_files=len(listing),
            total_regular_files=len(listing),
            total_size=total,
        )
        return RsyncResult(
            exit_code=0, stats=stats, stdout_tail="", stderr="", duration_seconds=0.0, manifest=listing, streams=1
        )


class CannedSource(SshSourceResource):
    """The SFTP host as fixed listings, bound under `sftp` as the real one is:
    `files` maps each EPN to its files (relative path -> size)."""

    files: dict[str, dict[str, int]]

    def client(self, logger: logging.Logger | Any | None = None) -> RsyncClient:
        return CannedRsyncClient(self.files)


class CannedPortal(PortalResource):
    """The portal as a fixed answer, bound under `portal` as the real one is: a visit for each
    EPN of `ended` (over two days ago) and of `running` (began an hour ago, ends tomorrow)."""

    ended: list[str] = Field(default_factory=list)
    running: list[str] = Field(default_factory=list)
    malformed: dict[str, str] = Field(default_factory=dict)  # EPN -> why, as PortalClient.answer names it

    def answer(self, since: datetime, until: datetime, logger: logging.Logger | None = None) -> VisitsAnswer:
        now = datetime.now(UTC)
        visits = [visit_of(epn, start=now - timedelta(days=3), end=now - timedelta(days=2)) for epn in self.ended]
        visits += [visit_of(epn, start=now - timedelta(hours=1), end=now + timedelta(days=1)) for epn in self.running]
        return VisitsAnswer(visits, dict(self.malformed))
