"""The client the assets, the sensor and the CLI use: list the EPNs on the SFTP host, copy one."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from ..epn import is_valid_epn, source_path_for
from .commands import DEFAULT_IO_TIMEOUT_SECONDS, list_command, transfer_command
from .endpoint import SshEndpoint
from .errors import file_io_error
from .manifests import Entry, Kind, Tree, files_of, folder_prefix, with_checksums
from .parsing import (
    SKIPPED_NON_REGULAR,
    ListingEntry,
    ProgressUpdate,
    TransferStats,
    begins_stats,
    parse_itemized_line,
    parse_listing_line,
    unescape_name,
)
from .process import RsyncResult, run_rsync, start_watch, terminate_transfers
from .streams import StreamPlan, plan_streams

# The name predates this package; log set-up and filters may refer to it.
log = logging.getLogger("assyncy.rsync")


class RsyncClient:
    """Lists and copies EPN folders from the SFTP host with rsync over ssh. Made, it starts the
    process's watch over its rsyncs (process.start_watch), ahead of the first one."""

    def __init__(
        self,
        endpoint: SshEndpoint,
        logger: logging.Logger | Any | None = None,
        *,
        progress_interval: float = 5.0,
        bwlimit_kib: int | None = None,
        checksum_algorithm: str = "xxh128",
    ):
        self.endpoint = endpoint
        self.log = logger or log
        self.progress_interval = progress_interval
        # Spare the SFTP service (and the link) when several transfers share it.
        self.bwlimit_kib = bwlimit_kib
        self.checksum_algorithm = checksum_algorithm
        start_watch()

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
        self._run(
            list_command(self.endpoint, root, recursive=False, io_timeout_seconds=io_timeout_seconds),
            description=f"listing {self.endpoint.remote(root)}",
            on_line=collect,
        )
        epns = set()
        for entry in entries:
            if not (entry.is_dir or entry.is_symlink):
                continue
            if is_valid_epn(entry.path):
                epns.add(entry.path)
            else:
                self.log.warning("ignoring folder %s in %s: not an EPN name", repr(entry.path)[:80], root)
        return sorted(epns)

    def source_tree(self, epn: str) -> Tree:
        """Every entry a transfer of `epn` covers (hidden skipped, `.info` kept): files with
        size and mtime, folders, symlinks with their target, and special files."""
        tree: Tree = {}

        def collect(line: str) -> None:
            entry = parse_listing_line(line)
            if entry is not None:
                tree[entry.path] = entry.entry

        path = source_path_for(epn, self.endpoint.source_root)
        self._run(list_command(self.endpoint, path, recursive=True), description=f"listing EPN {epn}", on_line=collect)
        return tree

    def source_summaries(self, epns: Sequence[str], io_timeout_seconds: int = 60) -> dict[str, Tree]:
        """Each EPN's source tree (the transfer's filters), from one listing of all of them
        over one ssh connection. Every EPN must be on the host."""
        trees: dict[str, Tree] = {epn: {} for epn in epns}
        if not epns:
            return trees

        def collect(line: str) -> None:
            entry = parse_listing_line(line)
            if entry is not None:
                epn, _, relative = entry.path.partition("/")
                if relative and epn in trees:
                    trees[epn][relative] = entry.entry

        paths = [source_path_for(epn, self.endpoint.source_root).rstrip("/") for epn in epns]
        argv = list_command(self.endpoint, paths[0], recursive=True, io_timeout_seconds=io_timeout_seconds)
        argv += [f":{path}" for path in paths[1:]]  # more folders from the same host, one connection
        self._run(argv, description=f"listing {len(epns)} EPN(s) to look for new data", on_line=collect)
        return trees

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
        """Copy EPN `epn` into `destination` (a dry run copies nothing); raises RsyncError on failure.

        With `streams` > 1 the source is listed first, and an EPN of at least
        `streams_min_mib` MiB is pulled by that many rsyncs at once (streams.py).
        `full_checksum` reads every file at both ends (rsync `--checksum`), so that
        every file, sent or not, comes with its checksum. `while_connecting` is called
        once, as soon as rsync runs and before its output is read: the caller's work that
        does not depend on the transfer overlaps ssh's connection set-up (an exception
        from it stops rsync and propagates). `when_listed` gets the source tree once rsync has
        reported every entry, while it closes its connection (one rsync only, not streams): the
        caller's work on the source alone overlaps that. A line on stderr (a special file passed
        over) may still add to the tree after it; the result's tree is the whole one.
        `when_folder_done` gets a folder's path in the tree (with a trailing `/`) once rsync's
        lines have moved from its files to another folder's (one rsync only): rsync has most
        likely written all of it, though nothing here vouches for that."""
        started = [False]

        def on_start(_pgid: int) -> None:
            if while_connecting is not None and not started[0]:
                started[0] = True
                while_connecting()

        if self.bwlimit_kib:
            extra_args = (*extra_args, f"--bwlimit={int(self.bwlimit_kib)}")
        if streams > 1:
            plan = plan_streams(
                {path: entry.size for path, entry in files_of(self.source_tree(epn)).items()}, streams, streams_min_mib
            )
            if plan is not None:
                on_start(0)  # the streams' own start hooks stop them all on an error
                return self._transfer_streams(
                    epn,
                    destination,
                    plan,
                    dry_run=dry_run,
                    full_checksum=full_checksum,
                    on_progress=on_progress,
                    extra_args=extra_args,
                )
        return self._transfer_one(
            epn,
            destination,
            dry_run=dry_run,
            full_checksum=full_checksum,
            on_progress=on_progress,
            extra_args=extra_args,
            on_start=on_start,
            when_listed=when_listed,
            when_folder_done=when_folder_done,
        )

    def _transfer_one(
        self,
        epn: str,
        destination: Path,
        *,
        dry_run: bool,
        full_checksum: bool,
        on_progress: Callable[[ProgressUpdate], None] | None,
        extra_args: Sequence[str],
        description: str = "",
        on_start: Callable[[int], None] | None = None,
        when_listed: Callable[[Tree], None] | None = None,
        when_folder_done: Callable[[str], None] | None = None,
    ) -> RsyncResult:
        argv = transfer_command(
            self.endpoint,
            epn,
            destination,
            dry_run=dry_run,
            extra_args=extra_args,
            checksum_algorithm=self.checksum_algorithm,
            full_checksum=full_checksum,
        )
        tree: Tree = {}
        sent: list[tuple[str, bool]] = []
        folder = [""]  # the folder of the last file or link reported

        def collect(line: str) -> None:
            item = parse_itemized_line(line)
            if item is not None:
                tree[item.path] = item.entry
                if item.sent:
                    sent.append((item.path, item.new))
                if when_folder_done is not None and item.entry.kind is not Kind.DIR:
                    here = folder_prefix(item.path)
                    if here != folder[0]:
                        done, folder[0] = folder[0], here
                        when_folder_done(done)
                return
            if when_listed is not None and begins_stats(line):
                when_listed(tree)
                return
            passed_over = SKIPPED_NON_REGULAR.match(line)
            if passed_over:
                tree[unescape_name(passed_over.group(1))] = Entry(Kind.SPECIAL)

        result = self._run(
            argv,
            description=description or f"{'dry-run ' if dry_run else ''}transfer of EPN {epn}",
            on_progress=on_progress,
            progress_interval=self.progress_interval,
            on_line=collect,
            on_stderr_line=collect,
            on_start=on_start,
        )
        result.tree = tree
        result.sent = sent
        return result

    def _transfer_streams(
        self,
        epn: str,
        destination: Path,
        plan: StreamPlan,
        *,
        dry_run: bool,
        full_checksum: bool,
        on_progress: Callable[[ProgressUpdate], None] | None,
        extra_args: Sequence[str],
    ) -> RsyncResult:
        """Pull each chunk of `plan` with its own rsync, all at once, then one plain rsync of
        the whole EPN; one result for them all.

        `--files-from` carries only the listed files: the top folder's attributes
        (`Dg+s`), symlinks and empty folders would never arrive. The closing
        rsync brings them, and anything that appeared since the listing, and
        its itemized lines are the transfer's tree, so a copy in streams is
        the copy one rsync makes; it reads no file the streams brought (the
        quick check sees them home). Each stream runs in its own thread (which
        also owns its rsync's death signal, see process.py). Whatever
        interrupts this thread (Dagster's termination, Ctrl-C) stops every
        stream before it propagates."""
        total = sum(plan.chunk_bytes)
        latest: dict[int, ProgressUpdate] = {}
        lock = threading.Lock()
        started = time.monotonic()
        next_report = [0.0]

        def progress_of(index: int) -> Callable[[ProgressUpdate], None]:
            def update(each: ProgressUpdate) -> None:
                with lock:
                    latest[index] = each
                    now = time.monotonic()
                    if on_progress is None or now < next_report[0]:
                        return
                    next_report[0] = now + self.progress_interval
                    done = sum(u.bytes_transferred for u in latest.values())
                    summed = ProgressUpdate(
                        bytes_transferred=done,
                        percent=min(100, int(100 * done / total)) if total else 100,
                        rate_bytes_per_second=sum(u.rate_bytes_per_second for u in latest.values()),
                        time_text=_clock(now - started),
                        files_transferred=sum(u.files_transferred or 0 for u in latest.values()),
                    )
                on_progress(summed)

            return update

        pgids: list[int] = []
        stopping = threading.Event()

        def stream_started(pgid: int) -> None:
            with lock:
                pgids.append(pgid)
            if stopping.is_set():  # started just as the others were being stopped
                terminate_transfers([pgid])

        if not dry_run:
            _make_folders(destination)  # every stream's rsync would make it, at the same moment
        with tempfile.TemporaryDirectory(prefix="assyncy-streams-") as folder:
            argvs = []
            for index, chunk in enumerate(plan.chunks):
                listing = Path(folder) / f"stream-{index}"
                # NUL-separated (`--from0`): a name may hold any byte but NUL, newlines included.
                listing.write_bytes(b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in chunk))
                argvs.append((*extra_args, f"--files-from={listing}", "--from0"))
            pool = ThreadPoolExecutor(max_workers=plan.streams, thread_name_prefix=f"rsync-{epn}")
            try:
                futures = [
                    pool.submit(
                        self._transfer_one,
                        epn,
                        destination,
                        dry_run=dry_run,
                        full_checksum=full_checksum,
                        on_progress=progress_of(index),
                        extra_args=args,
                        on_start=stream_started,
                        description=f"{'dry-run ' if dry_run else ''}transfer of EPN {epn} "
                        f"(stream {index + 1} of {plan.streams})",
                    )
                    for index, args in enumerate(argvs)
                ]
                wait(futures)
            except BaseException:
                stopping.set()
                with lock:
                    running = list(pgids)
                terminate_transfers(running)
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
        errors = [error for f in futures if (error := f.exception()) is not None]
        if errors:
            raise errors[0]
        results = [f.result() for f in futures]
        closing = self._transfer_one(
            epn,
            destination,
            dry_run=dry_run,
            full_checksum=full_checksum,
            on_progress=progress_of(plan.streams),
            extra_args=extra_args,
            on_start=stream_started,
            description=f"{'dry-run ' if dry_run else ''}transfer of EPN {epn} (closing pass after the streams)",
        )
        return _combined(results, closing, time.monotonic() - started)


def _make_folders(folder: Path) -> None:
    """Make `folder` and the folders above it, as rsync's `--mkpath` would, before the streams start.

    `--mkpath` looks for each missing folder, then makes it: of the streams making the same one at
    once the slower failed ("mkdir ... failed: File exists"). Made here, it is there for them all."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise file_io_error(f"cannot make the folder {folder} ({exc.strerror})") from None


def _clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _combined(streams: list[RsyncResult], closing: RsyncResult, duration: float) -> RsyncResult:
    """One result for a transfer in streams: totals summed; the tree is the closing pass's,
    with the checksum of each file a stream sent (the closing pass found it home)."""
    results = [*streams, closing]
    stats = [r.stats or TransferStats() for r in results]
    summed = TransferStats(
        **{name: sum(getattr(s, name) for s in stats) for name in TransferStats.__dataclass_fields__}
    )
    tree = with_checksums(closing.tree or {}, (item for r in streams for item in (r.tree or {}).items()))
    return RsyncResult(
        exit_code=0,
        stats=summed,
        stdout_tail="\n".join(r.stdout_tail for r in results),
        stderr="\n".join(r.stderr for r in results if r.stderr),
        duration_seconds=duration,
        last_progress=None,
        argv=streams[0].argv,
        tree=tree,
        sent=list(dict.fromkeys(item for r in results for item in r.sent)),
        streams=len(streams),
    )
