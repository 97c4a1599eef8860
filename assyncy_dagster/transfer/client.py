"""The client the assets, the sensor and the CLI use: list the EPNs on the SFTP host, copy one."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..epn import is_valid_epn, source_path_for
from .commands import DEFAULT_IO_TIMEOUT_SECONDS, list_command, transfer_command
from .endpoint import SshEndpoint
from .parsing import (
    SKIPPED_NON_REGULAR,
    ListingEntry,
    ProgressUpdate,
    parse_itemized_line,
    parse_listing_line,
    unescape_name,
)
from .process import RsyncResult, run_rsync

# The name predates this package; log set-up and filters may refer to it.
log = logging.getLogger("assyncy.rsync")


class RsyncClient:
    """Lists and copies EPN folders from the SFTP host with rsync over ssh."""

    def __init__(self, endpoint: SshEndpoint, logger: logging.Logger | Any | None = None, *,
                 progress_interval: float = 5.0, bwlimit_kib: int | None = None):
        self.endpoint = endpoint
        self.log = logger or log
        self.progress_interval = progress_interval
        # Spare the SFTP service (and the link) when several transfers share it.
        self.bwlimit_kib = bwlimit_kib

    def _run(self, argv: list[str], *, description: str, **kwargs: Any) -> RsyncResult:
        self.endpoint.check_files()
        return run_rsync(argv, description=description, endpoint=self.endpoint, **kwargs)

    def list_epns(self, io_timeout_seconds: int = DEFAULT_IO_TIMEOUT_SECONDS) -> list[str]:
        """The EPN folders under the source root, sorted; other names are logged and dropped."""
        entries: list[ListingEntry] = []

        def collect(line: str) -> None:
            entry = parse_listing_line(line)
            if entry is not None:
                entries.append(entry)

        root = self.endpoint.root_path()
        self._run(list_command(self.endpoint, root, recursive=False, io_timeout_seconds=io_timeout_seconds),
                  description=f"listing {self.endpoint.remote(root)}", on_line=collect)
        epns = set()
        for entry in entries:
            if not (entry.is_dir or entry.is_symlink):
                continue
            if is_valid_epn(entry.path):
                epns.add(entry.path)
            else:
                self.log.warning("ignoring folder %s in %s: not an EPN name", repr(entry.path)[:80], root)
        return sorted(epns)

    def source_manifest(self, epn: str) -> dict[str, int]:
        """Relative path -> size of every regular file a transfer of `epn` copies (hidden skipped, `.info` kept)."""
        manifest: dict[str, int] = {}

        def collect(line: str) -> None:
            entry = parse_listing_line(line)
            if entry is not None and entry.is_file:
                manifest[entry.path] = entry.size

        path = source_path_for(epn, self.endpoint.source_root)
        self._run(list_command(self.endpoint, path, recursive=True),
                  description=f"listing EPN {epn}", on_line=collect)
        return manifest

    def transfer(
        self,
        epn: str,
        destination: Path,
        *,
        dry_run: bool,
        on_progress: Callable[[ProgressUpdate], None] | None = None,
        extra_args: Sequence[str] = (),
    ) -> RsyncResult:
        """Copy EPN `epn` into `destination` (a dry run copies nothing); raises RsyncError on failure."""
        if self.bwlimit_kib:
            extra_args = (*extra_args, f"--bwlimit={int(self.bwlimit_kib)}")
        argv = transfer_command(self.endpoint, epn, destination, dry_run=dry_run, extra_args=extra_args)
        manifest: dict[str, int] = {}
        skipped: list[str] = []

        def collect(line: str) -> None:
            item = parse_itemized_line(line)
            if item is not None:
                manifest[item[0]] = item[1]
                return
            passed_over = SKIPPED_NON_REGULAR.match(line)
            if passed_over:
                skipped.append(unescape_name(passed_over.group(1)))

        result = self._run(
            argv,
            description=f"{'dry-run ' if dry_run else ''}transfer of EPN {epn}",
            on_progress=on_progress,
            progress_interval=self.progress_interval,
            on_line=collect,
            on_stderr_line=collect,
        )
        result.manifest = manifest
        result.skipped = skipped
        return result
