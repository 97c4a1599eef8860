"""In-memory stand-ins for the unit tier: the SFTP host and the portal as fixed answers.

They replace the two resources that reach the outside world (`sftp`, `portal`) with
subclasses whose answers are canned, so that an asset runs its own code, with config.yml
read as in production, and nothing is started: no rsync, no ssh, no HTTP. They live with
the tests because production never chooses them (the real servers of the integration
tier are in assyncy-dagster-demo/assyncy_dagster_demo/testing/).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import Field

from assyncy_dagster.domain import VisitsAnswer
from assyncy_dagster.resources.portal import PortalResource
from assyncy_dagster.resources.ssh_source import SshSourceResource
from assyncy_dagster.transfer import Entry, Kind, ProgressUpdate, RsyncClient, RsyncResult, TransferStats, Tree
from assyncy_dagster.transfer.manifests import folder_prefix
from tests.support.helpers import visit_of

CANNED_MTIME = 1_790_000_000


class CannedRsyncClient(RsyncClient):
    """An RsyncClient whose SFTP host is `files` (EPN -> relative path -> size): a transfer
    writes those files (not in a dry-run) and reports what rsync would have, exit code 0."""

    def __init__(self, files: Mapping[str, Mapping[str, int]]):  # no endpoint: nothing is reached
        self.files = {epn: dict(listing) for epn, listing in files.items()}
        self.transfers: list[tuple[str, Path, bool]] = []  # (epn, destination, dry_run) of each call

    def source_tree(self, epn: str) -> Tree:
        # One fixed mtime for every file, as the facility's -t preserved times would be.
        return {path: Entry(Kind.FILE, size, CANNED_MTIME) for path, size in self.files.get(epn, {}).items()}

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
        full_checksum: bool = False,
        while_connecting: Callable[[], None] | None = None,
        when_listed: Callable[[Tree], None] | None = None,
        when_folder_done: Callable[[str], None] | None = None,
    ) -> RsyncResult:
        self.transfers.append((epn, destination, dry_run))
        if while_connecting is not None:  # as the real client: once rsync runs, before it copies
            while_connecting()
        tree: Tree = {}
        folder = ""
        for relative, entry in self.source_tree(epn).items():
            here = folder_prefix(relative)
            if when_folder_done is not None and here != folder:  # as the real client: moved on
                when_folder_done(folder)
                folder = here
            content = b"x" * entry.size
            if not dry_run:
                path = destination / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
                os.utime(path, (CANNED_MTIME, CANNED_MTIME))
            # The sender's checksum as rsync prints it (`%C`); MD5 here, 32 hex digits as xxh128's.
            tree[relative] = Entry(Kind.FILE, entry.size, CANNED_MTIME, checksum=hashlib.md5(content).hexdigest())
        for folder in {str(Path(p).parent) for p in tree if "/" in p}:
            tree[folder] = Entry(Kind.DIR, mtime=CANNED_MTIME)
        if when_listed is not None:  # as the real client: every entry reported, rsync still closing
            when_listed(tree)
        total = sum(e.size for e in tree.values())
        files = sum(1 for e in tree.values() if e.kind is Kind.FILE)
        stats = TransferStats(
            files_transferred=files,
            bytes_transferred=total,
            total_files=files,
            total_regular_files=files,
            total_size=total,
        )
        return RsyncResult(
            exit_code=0,
            stats=stats,
            stdout_tail="",
            stderr="",
            duration_seconds=0.0,
            tree=tree,
            sent=[(p, True) for p, e in tree.items() if e.kind is Kind.FILE],
            streams=1,
        )


class CannedSource(SshSourceResource):
    """The SFTP host as fixed listings, bound under `sftp` as the real one is:
    `files` maps each EPN to its files (relative path -> size)."""

    files: dict[str, dict[str, int]]

    def client(self, logger: logging.Logger | Any | None = None) -> RsyncClient:
        return CannedRsyncClient(self.files)

    @contextlib.contextmanager
    def shared_client(self, logger: logging.Logger | Any | None = None) -> Iterator[RsyncClient]:
        yield self.client(logger)  # no host, so no connection to share


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
