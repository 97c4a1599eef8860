"""The SSH + rsync transfer layer: the one place where rsync commands are built and run.

Pure Python (no Dagster imports) so that command building and output parsing
test in microseconds, and so that the CLI, the assets and the benchmarks run
exactly the same code.

Why the flags are what they are (`transfer_command`):

* `-r -t --perms --chmod=Dg+s,ug+w,o-wx,ug+X --size-only --include .info
  --exclude .*` are the flags HPC ASSyncy meant to pass (its `-stats` typo
  turned them into `-a`), plus `Fug-st` in `--chmod`: a setuid, setgid or
  sticky bit on a source file never arrives (`--perms` would copy it). `--size-only` because the beamline never rewrites a
  frame in place, and comparing checksums of terabytes would take days. The
  manifest check (`compare_manifests`) then catches missing and truncated
  files; a frame rewritten at the same size is invisible to both, by design.
* `--include .info --exclude .*` match *basenames at every level*: hidden files
  and folders anywhere are skipped, and anything named exactly `.info` is kept.
  `local_manifest` applies the same rule to the destination.
* `--partial-dir=.rsync-partial`: an interrupted file is moved into
  `<its folder>/.rsync-partial/` and used as the basis when the transfer
  resumes, so a half-copied frame never sits under its final name (the seed's
  `-P` implied `--partial`, which leaves exactly that). The `.*` exclude already
  matches `.rsync-partial`, so the folder is never listed, sent or counted as
  data, and rsync would protect it from `--delete` anyway. While a file is in
  flight rsync writes it to a hidden `.<name>.XXXXXX` temp file beside the
  final name; only a SIGKILL (after the SIGTERM grace) can leave that behind,
  and being hidden it is ignored by the manifests and replaced on the next run.
* `--mkpath` creates `<root>/<project>/<epn>/` (rsync does not, otherwise);
  `--dry-run` creates nothing at all.
* `--info=progress2 --no-h --stats`: one overall progress record (ending in
  `\\r`) instead of a line per file, plain numbers, and the totals we report.
* `-ii --out-format=%i|%l|%n`: one line per file the transfer considered,
  changed or not, with its size at the source. That is the source manifest the
  `matches_source` check compares the destination with, taken from the
  transfer itself instead of a second listing over a second ssh connection
  (which cost as much as the transfer of a small EPN).
* `--timeout`: a stalled remote (hung file system at the facility) fails with
  exit code 30 instead of hanging the run forever.
"""

from __future__ import annotations

import logging
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .epn import is_valid_epn, source_path_for, validate_epn

log = logging.getLogger("assyncy.rsync")

RSYNC = "rsync"
SSH = "ssh"
PARTIAL_DIR = ".rsync-partial"
ITEMIZE = ("-ii", "--out-format=%i|%l|%n")
# `%i` is 11 characters (e.g. `>f+++++++++`, `.f         `); a regular file's has `f` second.
_ITEMIZED = re.compile(r"^([<>ch.*][fdLDS].{9})\|(\d+)\|(.+)$")
KEPT_HIDDEN_NAME = ".info"
# Each pair of items is one rsync filter; the order matters (first match wins).
TRANSFER_FILTERS: tuple[str, ...] = ("--include", KEPT_HIDDEN_NAME, "--exclude", ".*")
CHMOD = "--chmod=Dg+s,ug+w,o-wx,ug+X,Fug-st"
DEFAULT_IO_TIMEOUT_SECONDS = 600
# How long rsync gets to save its partial file after SIGTERM before SIGKILL.
TERMINATE_GRACE_SECONDS = 5.0
_READ_CHUNK = 1 << 16
_MAX_PENDING = 1 << 16  # longest unterminated output record we keep
_STDOUT_TAIL_LINES = 200
_STDERR_TAIL_LINES = 60
_ERROR_STDERR_LINES = 8

RSYNC_EXIT_MEANINGS: dict[int, str] = {
    0: "success",
    1: "syntax or usage error",
    2: "protocol incompatibility",
    3: "errors selecting input/output files or folders",
    4: "requested action not supported (or refused by the server)",
    5: "error starting the client-server protocol",
    6: "daemon unable to append to its log file",
    10: "error in socket I/O",
    11: "error in file I/O",
    12: "error in the rsync protocol data stream",
    13: "errors with program diagnostics",
    14: "error in IPC code",
    20: "received SIGUSR1 or SIGINT",
    21: "some error returned by waitpid()",
    22: "error allocating core memory buffers",
    23: "partial transfer due to error",
    24: "partial transfer due to vanished source files",
    25: "the --max-delete limit stopped deletions",
    30: "timeout in data send/receive",
    35: "timeout waiting for daemon connection",
    255: "ssh failed (or rsync gave an unexplained error)",
}

# What the admin should do about each failure.
_EXIT_HINTS: dict[int, str] = {
    3: "check that the source folder exists on the SFTP host and the destination is writable",
    4: "the server refused an option; the SFTP account may be restricted to read-only rsync",
    5: "check host and ssh-port in config.yml and that the SFTP host is reachable",
    10: "the connection broke; check the network to the SFTP host and retry",
    11: "check free space and permissions under destination-root-path",
    12: "the connection closed unexpectedly; the server may have refused the command (see below) or ssh failed",
    23: "some files could not be read or written (permissions, disk full, or a missing source folder); "
    "the next run retries them",
    24: "files vanished on the source while copying (the beamline may still be writing); the next run retries",
    30: "the SFTP host stopped answering; retry later",
    35: "the SFTP host stopped answering; retry later",
    255: "check host, ssh-port, sftp-username and that key-file is authorised on the SFTP host",
}

_HOST_KEY_PATTERNS = re.compile(
    r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key verification failed|"
    r"No [A-Z0-9-]+ host key is known for|Host key for .* has changed",
    re.IGNORECASE,
)
# Characters that rsync's -e splitting, ssh's option parser or ssh's %-token
# expansion would change: refuse them in paths rather than guess at quoting.
_UNSAFE_PATH_CHARS = re.compile(r"[\s'\"%\\]|^~")
_HOST = re.compile(r"[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]", re.ASCII)
_USER = re.compile(r"[A-Za-z0-9_.@+-]+", re.ASCII)


class SshConfigError(ValueError):
    """An SSH setting (host, user, key file, known-hosts file, source root) that cannot work."""


class RsyncError(Exception):
    """rsync failed; `exit_code` is rsync's, the message ends with its last stderr lines."""

    def __init__(self, message: str, *, exit_code: int, stderr_tail: str = "", result: RsyncResult | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
        self.result = result

    @property
    def meaning(self) -> str:
        return exit_meaning(self.exit_code)


class HostKeyError(RsyncError):
    """ssh refused the SFTP host's key: it is unknown or differs from the pinned one."""


class TransferTerminated(RsyncError):
    """The transfer was stopped by `terminate_all_transfers` (service shutdown)."""


def exit_meaning(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return RSYNC_EXIT_MEANINGS.get(code, "unknown rsync exit code")


# -- the SSH side -------------------------------------------------------------


def _check_path(path: Path, setting: str) -> None:
    text = str(path)
    if _UNSAFE_PATH_CHARS.search(text):
        raise SshConfigError(
            f"{setting} {text!r} contains a space, quote, backslash, '%' or leading '~', which rsync's -e "
            f"option or ssh would misread: move the file to a plain absolute path"
        )


@dataclass(frozen=True)
class SshEndpoint:
    """Where and how to reach the SFTP host: everything `ssh` needs, and the served root."""

    host: str
    port: int
    user: str
    key_file: Path
    known_hosts_file: Path | None
    source_root: str
    connect_timeout_seconds: int = 30
    server_alive_interval_seconds: int = 15

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not _HOST.fullmatch(self.host) or self.host.startswith("-"):
            raise SshConfigError(f"host {self.host!r} is not a plain host name or address")
        if not isinstance(self.user, str) or not _USER.fullmatch(self.user) or self.user.startswith("-"):
            raise SshConfigError(f"SFTP user {self.user!r} is not a plain user name (letters, digits, . _ @ + -)")
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise SshConfigError(f"ssh-port {self.port!r} is not a TCP port (1-65535)")
        object.__setattr__(self, "key_file", Path(self.key_file))
        _check_path(self.key_file, "key-file")
        if self.known_hosts_file is not None:
            object.__setattr__(self, "known_hosts_file", Path(self.known_hosts_file))
            _check_path(self.known_hosts_file, "known-hosts-file")
        root = self.source_root
        if (
            not isinstance(root, str)
            or not root.startswith("/")
            or ".." in root.split("/")
            or any(ord(c) < 32 for c in root)
        ):
            raise SshConfigError(f"source-root {root!r} must be an absolute remote path without '..', e.g. /data/mx")

    @classmethod
    def from_settings(cls, settings: Any) -> SshEndpoint:
        """The endpoint config.yml describes (`host`, `ssh-port`, `sftp-username`, `key-file`, ...)."""
        return cls(
            host=settings.host,
            port=settings.ssh_port,
            user=settings.sftp_user,
            key_file=Path(settings.key_file),
            known_hosts_file=Path(settings.known_hosts_file) if settings.known_hosts_file else None,
            source_root=settings.remote_root,
        )

    def check_files(self) -> None:
        """Raise SshConfigError naming the key or known-hosts file when it is missing or unreadable."""
        for path, setting in ((self.key_file, "key-file"), (self.known_hosts_file, "known-hosts-file")):
            if path is None:
                continue
            if not path.is_file():
                raise SshConfigError(f"{setting} {path} does not exist (or is not a file): fix {setting} in config.yml")
            if not os.access(path, os.R_OK):
                raise SshConfigError(f"{setting} {path} is not readable by this user: fix its permissions")

    def ssh_command(self) -> list[str]:
        """The ssh argv: key-only, non-interactive, host key checked strictly."""
        cmd = [
            SSH,
            "-i", str(self.key_file),
            "-p", str(self.port),
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
        ]
        if self.known_hosts_file is not None:
            # Pin to this file alone: a stale system-wide entry must not vouch for the host.
            cmd += ["-o", f"UserKnownHostsFile={self.known_hosts_file}", "-o", "GlobalKnownHostsFile=/dev/null"]
        cmd += [
            "-o", f"ConnectTimeout={self.connect_timeout_seconds}",
            "-o", f"ServerAliveInterval={self.server_alive_interval_seconds}",
            "-o", "ServerAliveCountMax=4",
        ]
        return cmd

    def rsync_shell(self) -> str:
        """`ssh_command()` as the single string rsync's `-e` wants.

        rsync splits that string on spaces and strips quotes, so every part must
        be free of both; `_check_path` refused such paths when the endpoint was made.
        """
        parts = self.ssh_command()
        for part in parts:
            if any(c.isspace() or c in "'\"" for c in part):
                raise SshConfigError(f"ssh argument {part!r} cannot be passed through rsync -e")
        return " ".join(parts)

    def remote(self, path: str) -> str:
        """`user@host:path`, the remote spec rsync takes."""
        return f"{self.user}@{self.host}:{path}"

    def root_path(self) -> str:
        """The source root with the trailing slash that makes rsync list its contents."""
        return self.source_root.rstrip("/") + "/"


# -- commands -----------------------------------------------------------------


def transfer_command(
    endpoint: SshEndpoint,
    epn: str,
    destination: Path,
    *,
    dry_run: bool,
    extra_args: Sequence[str] = (),
    io_timeout_seconds: int = DEFAULT_IO_TIMEOUT_SECONDS,
) -> list[str]:
    """The rsync argv that copies EPN `epn` into `destination` (see the module docstring for why each flag)."""
    validate_epn(epn)
    destination = Path(destination).absolute()  # absolute: never read as an option or a host:path
    argv = [
        RSYNC,
        "-r", "-t",
        "--stats",
        CHMOD,
        "--perms",
        "--size-only",
        *TRANSFER_FILTERS,
        f"--partial-dir={PARTIAL_DIR}",
        "--mkpath",
        "--info=progress2",
        "--no-h",
        *ITEMIZE,
        f"--timeout={int(io_timeout_seconds)}",
    ]
    if dry_run:
        argv.append("--dry-run")
    argv += list(extra_args)
    argv += ["-e", endpoint.rsync_shell(), endpoint.remote(source_path_for(epn, endpoint.source_root)),
             f"{destination}/"]
    return argv


def list_command(endpoint: SshEndpoint, path: str, *, recursive: bool,
                 io_timeout_seconds: int = DEFAULT_IO_TIMEOUT_SECONDS) -> list[str]:
    """rsync with no destination: prints a listing of remote `path` (recursive: with the transfer's filters)."""
    argv = [RSYNC, "--list-only", "--no-h", f"--timeout={int(io_timeout_seconds)}"]
    if recursive:
        argv += ["-r", *TRANSFER_FILTERS]
    argv += ["-e", endpoint.rsync_shell(), endpoint.remote(path)]
    return argv


# -- parsing ------------------------------------------------------------------


@dataclass(frozen=True)
class ListingEntry:
    """One line of `rsync --list-only`: a path relative to the listed folder."""

    path: str
    size: int
    is_dir: bool
    is_symlink: bool = False

    @property
    def is_file(self) -> bool:
        return not self.is_dir and not self.is_symlink


_LISTING_LINE = re.compile(
    r"^(?P<mode>[dlcbps-][rwxsStT-]{9})[.+@]?\s+(?P<size>[\d,.]+)\s+"
    r"\d{4}/\d{2}/\d{2}\s+\d{2}:\d{2}:\d{2}\s(?P<name>.+)$"
)
_ESCAPE = re.compile(r"\\#([0-7]{3})")


def _unescape_name(name: str) -> str:
    """Undo rsync's `\\#ooo` escaping of unprintable bytes (a newline in a name is `\\#012`)."""
    if "\\#" not in name:
        return name
    raw = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(name):
        raw += name[pos:match.start()].encode("utf-8", "surrogateescape")
        raw.append(int(match.group(1), 8) & 0xFF)
        pos = match.end()
    raw += name[pos:].encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "surrogateescape")


def _number(text: str) -> int:
    return int(text.replace(",", "").split(".")[0] or 0)


def parse_listing_line(line: str) -> ListingEntry | None:
    """One listing line as an entry; None for the `.` entry, special files and non-listing lines."""
    match = _LISTING_LINE.match(line.rstrip("\r\n"))
    if match is None:
        return None
    kind = match.group("mode")[0]
    if kind not in "-dl":
        return None  # devices, fifos, sockets: never data
    name = _unescape_name(match.group("name"))
    is_symlink = kind == "l"
    if is_symlink and " -> " in name:
        name = name.split(" -> ", 1)[0]
    if name in (".", "./"):
        return None
    return ListingEntry(path=name.rstrip("/"), size=_number(match.group("size")), is_dir=kind == "d",
                        is_symlink=is_symlink)


def parse_listing(text: str) -> list[ListingEntry]:
    """Entries of an `rsync --list-only` listing (names with spaces kept whole; symlinks marked)."""
    entries = []
    for line in text.splitlines():
        entry = parse_listing_line(line)
        if entry is not None:
            entries.append(entry)
    return entries


@dataclass(frozen=True)
class TransferStats:
    """The totals of rsync's `--stats` block (zeros where the block did not say)."""

    files_transferred: int = 0
    bytes_transferred: int = 0
    total_files: int = 0
    total_regular_files: int = 0
    total_dirs: int = 0
    created_files: int = 0
    deleted_files: int = 0
    total_size: int = 0
    literal_data: int = 0
    matched_data: int = 0
    file_list_size: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0


_NUM = r"([\d,]+(?:\.\d+)?)"
_STATS_FIELDS: dict[str, re.Pattern[str]] = {
    "total_files": re.compile(rf"^Number of files:\s+{_NUM}", re.MULTILINE),
    "created_files": re.compile(rf"^Number of created files:\s+{_NUM}", re.MULTILINE),
    "deleted_files": re.compile(rf"^Number of deleted files:\s+{_NUM}", re.MULTILINE),
    "files_transferred": re.compile(rf"^Number of regular files transferred:\s+{_NUM}", re.MULTILINE),
    "total_size": re.compile(rf"^Total file size:\s+{_NUM}", re.MULTILINE),
    "bytes_transferred": re.compile(rf"^Total transferred file size:\s+{_NUM}", re.MULTILINE),
    "literal_data": re.compile(rf"^Literal data:\s+{_NUM}", re.MULTILINE),
    "matched_data": re.compile(rf"^Matched data:\s+{_NUM}", re.MULTILINE),
    "file_list_size": re.compile(rf"^File list size:\s+{_NUM}", re.MULTILINE),
    "bytes_sent": re.compile(rf"^Total bytes sent:\s+{_NUM}", re.MULTILINE),
    "bytes_received": re.compile(rf"^Total bytes received:\s+{_NUM}", re.MULTILINE),
}
_FILE_KINDS = re.compile(r"^Number of files:.*?\((?P<kinds>[^)]*)\)", re.MULTILINE)


def has_stats(text: str) -> bool:
    return _STATS_FIELDS["total_files"].search(text) is not None


def parse_stats(text: str) -> TransferStats:
    """Parse rsync's `--stats` block; numbers with or without digit grouping (`--no-h`)."""
    values: dict[str, int] = {}
    for name, pattern in _STATS_FIELDS.items():
        match = pattern.search(text)
        if match:
            values[name] = _number(match.group(1))
    kinds = _FILE_KINDS.search(text)
    if kinds:
        for key, number in re.findall(r"(\w+):\s*([\d,]+)", kinds.group("kinds")):
            if key == "reg":
                values["total_regular_files"] = _number(number)
            elif key == "dir":
                values["total_dirs"] = _number(number)
    return TransferStats(**values)


@dataclass(frozen=True)
class ProgressUpdate:
    """One `--info=progress2` record: overall progress of a running transfer."""

    bytes_transferred: int
    percent: int
    rate_bytes_per_second: float
    time_text: str  # rsync's ETA while running, elapsed time on the last record
    files_transferred: int | None = None
    files_to_check: int | None = None
    files_total: int | None = None
    listing_complete: bool = True  # False while rsync still scans folders (ir-chk)

    @property
    def files_checked(self) -> int | None:
        if self.files_total is None or self.files_to_check is None:
            return None
        return self.files_total - self.files_to_check

    def __str__(self) -> str:
        """One log line: `42% 1.3 GiB at 151.2 MiB/s, 120 files transferred, 300/900 checked, 0:00:09`."""
        text = f"{self.percent}% {_human(self.bytes_transferred)} at {_human(self.rate_bytes_per_second)}/s"
        if self.files_transferred is not None:
            text += f", {self.files_transferred} files transferred"
        if self.files_checked is not None:
            scanning = "" if self.listing_complete else " (still listing)"
            text += f", {self.files_checked}/{self.files_total} checked{scanning}"
        return f"{text}, {self.time_text}"


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


_PROGRESS = re.compile(
    r"^\s*(?P<bytes>[\d,]+)\s+(?P<pct>\d+)%\s+(?P<rate>[\d.,]+)(?P<unit>[kMGTP]?B)/s\s+(?P<time>\d+:\d{2}:\d{2})"
    r"(?:\s+\(xfr#(?P<xfr>\d+),\s*(?P<chk>ir|to)-chk=(?P<todo>\d+)/(?P<total>\d+)\))?"
)
_RATE_UNITS = {"B": 1, "kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40, "PB": 1 << 50}


def parse_progress(record: str) -> ProgressUpdate | None:
    """Parse one progress2 record (the text between `\\r`s), or None if it is not one."""
    match = _PROGRESS.match(record)
    if match is None:
        return None
    xfr = match.group("xfr")
    return ProgressUpdate(
        bytes_transferred=_number(match.group("bytes")),
        percent=int(match.group("pct")),
        rate_bytes_per_second=float(match.group("rate").replace(",", "")) * _RATE_UNITS[match.group("unit")],
        time_text=match.group("time"),
        files_transferred=int(xfr) if xfr is not None else None,
        files_to_check=int(match.group("todo")) if xfr is not None else None,
        files_total=int(match.group("total")) if xfr is not None else None,
        listing_complete=match.group("chk") != "ir",
    )


# -- running rsync ------------------------------------------------------------


@dataclass
class RsyncResult:
    """What a finished rsync run left: exit code, `--stats` totals (None without a stats block), output tails."""

    exit_code: int
    stats: TransferStats | None
    stdout_tail: str
    stderr: str
    duration_seconds: float
    last_progress: ProgressUpdate | None = None
    argv: list[str] = field(default_factory=list, repr=False)
    # Relative path -> size at the source of every regular file the transfer covered.
    manifest: dict[str, int] | None = None
    # Source entries rsync passed over as not regular files (symlinks, devices), relative paths.
    skipped: list[str] = field(default_factory=list)


_SKIPPED_NON_REGULAR = re.compile(r'^skipping non-regular file "(.+)"$')


def parse_itemized_line(line: str) -> tuple[str, int] | None:
    """(path, size) from one `-ii --out-format=%i|%l|%n` line of a regular file, else None."""
    match = _ITEMIZED.match(line)
    if match is None or match.group(1)[1] != "f":
        return None
    return _unescape_name(match.group(3)), int(match.group(2))


# Live rsync process groups, so a signal handler can stop every transfer at once.
# Re-entrant: a signal handler calling terminate_all_transfers may interrupt
# the main thread while it holds the lock.
_live_lock = threading.RLock()
_live: dict[int, subprocess.Popen[bytes]] = {}
_terminated: set[int] = set()


def live_transfer_pids() -> list[int]:
    """Process-group ids of the rsync runs in progress."""
    with _live_lock:
        return list(_live)


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is still in process group `pgid`."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg also reaches zombies: when rsync's leader dies first, its receiver
    # fork is reparented to init, which may reap it seconds later. A zombie is
    # already dead (its partial file saved), so only count the living.
    try:
        names = os.listdir("/proc")
    except OSError:
        return True
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2:].split()  # the command name may hold spaces and parentheses
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.005
    while _group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    return True


def _kill_process_group(proc: subprocess.Popen[bytes], grace: float = TERMINATE_GRACE_SECONDS) -> None:
    """SIGTERM rsync's group (rsync then saves its partial file), SIGKILL what is left after `grace`.

    A second interruption while waiting (another Ctrl-C) skips the grace but
    still kills and reaps the group before it propagates.
    """
    pgid = proc.pid
    try:
        _signal_group(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(pgid, signal.SIGKILL)
            proc.wait()
        # The leader is gone; its forks and ssh may still be finishing up.
        if not _wait_group_gone(pgid, grace):
            _signal_group(pgid, signal.SIGKILL)
            _wait_group_gone(pgid, grace)
    except BaseException:
        _signal_group(pgid, signal.SIGKILL)
        proc.wait()
        raise


def terminate_all_transfers(grace: float = TERMINATE_GRACE_SECONDS) -> int:
    """Stop every running rsync (SIGTERM, then SIGKILL after `grace`); returns how many were running.

    Safe from any thread, and from a signal handler in the main thread. Each
    interrupted `run_rsync` raises TransferTerminated in its own thread.
    """
    with _live_lock:
        pgids = list(_live)
        _terminated.update(pgids)
    for pgid in pgids:
        _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for pgid in pgids:
        if not _wait_group_gone(pgid, max(0.0, deadline - time.monotonic())):
            _signal_group(pgid, signal.SIGKILL)
    for pgid in pgids:
        _wait_group_gone(pgid, grace)
    return len(pgids)


class _Tail:
    """Splits a byte stream into records at `\\r`/`\\n`, keeping only the last `limit` lines."""

    __slots__ = ("lines", "on_record", "pending")

    def __init__(self, limit: int, on_record: Callable[[str], bool] | None = None):
        self.pending = b""
        self.lines: deque[str] = deque(maxlen=limit)
        # Returns True when it consumed the record (a progress record is not a line to keep).
        self.on_record = on_record

    def feed(self, data: bytes) -> None:
        data = self.pending + data
        last = max(data.rfind(b"\n"), data.rfind(b"\r"))
        if last < 0:
            self.pending = data[-_MAX_PENDING:]
            return
        self.pending = data[last + 1:][-_MAX_PENDING:]
        self._records(data[: last + 1])

    def _records(self, block: bytes) -> None:
        text = block.decode("utf-8", "replace")
        on_record = self.on_record
        append = self.lines.append
        for record in re.split(r"[\r\n]", text):
            if not record:
                continue
            if on_record is not None and on_record(record):
                continue
            append(record)

    def close(self) -> None:
        if self.pending:
            self._records(self.pending + b"\n")
            self.pending = b""

    def text(self) -> str:
        return "\n".join(self.lines)


def _redact(lines: Iterable[str]) -> list[str]:
    # ssh never prints key material, but keep that true even for odd failures.
    return [line for line in lines if "PRIVATE KEY" not in line]


def _error_for(exit_code: int, stderr_lines: list[str], *, description: str, host_key_problem: bool,
               terminated: bool, endpoint: SshEndpoint | None, result: RsyncResult) -> RsyncError:
    relevant = [line for line in _redact(stderr_lines) if "Could not chdir to home directory" not in line]
    tail = "\n".join(relevant[-_ERROR_STDERR_LINES:])
    shown = "\nrsync/ssh said:\n  " + "\n  ".join(relevant[-_ERROR_STDERR_LINES:]) if relevant else ""
    what = description or "rsync"
    if terminated:
        return TransferTerminated(
            f"{what} was stopped by a shutdown request (rsync exit {exit_code}); the next run resumes it",
            exit_code=exit_code, stderr_tail=tail, result=result,
        )
    if host_key_problem:
        where = f"{endpoint.host}:{endpoint.port}" if endpoint else "the SFTP host"
        pinned = (f"known-hosts-file {endpoint.known_hosts_file}" if endpoint and endpoint.known_hosts_file
                  else "the default ~/.ssh/known_hosts (set known-hosts-file in config.yml to pin it)")
        return HostKeyError(
            f"{what} failed: the SSH host key of {where} is unknown or does not match {pinned}. "
            f"Check known-hosts-file: if the facility announced a new host key, add it "
            f"(`ssh-keyscan -p PORT HOST` and verify the fingerprint with them); otherwise do not connect, "
            f"the connection may be intercepted.{shown}",
            exit_code=exit_code, stderr_tail=tail, result=result,
        )
    hint = _EXIT_HINTS.get(exit_code)
    return RsyncError(
        f"{what} failed: rsync exit code {exit_code} ({exit_meaning(exit_code)})"
        + (f": {hint}" if hint else "") + shown,
        exit_code=exit_code, stderr_tail=tail, result=result,
    )


def _pump(proc: subprocess.Popen[bytes], stdout: _Tail, stderr: _Tail) -> int:
    """Read rsync's stdout and stderr in large chunks until both close; return its exit code."""
    streams = {proc.stdout.fileno(): stdout, proc.stderr.fileno(): stderr}  # type: ignore[union-attr]
    with selectors.DefaultSelector() as selector:
        for fd in streams:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        exited_at: float | None = None
        while streams:
            for key, _ in selector.select(timeout=1.0):
                try:
                    data = os.read(key.fd, _READ_CHUNK)
                except BlockingIOError:
                    continue
                if data:
                    streams[key.fd].feed(data)
                else:
                    selector.unregister(key.fd)
                    del streams[key.fd]
            if streams and proc.poll() is not None:
                # A grandchild that kept our pipes open must not hang us once rsync is done.
                exited_at = exited_at or time.monotonic()
                if time.monotonic() - exited_at > 5.0:
                    break
    exit_code = proc.wait()
    stdout.close()
    stderr.close()
    return exit_code


def _die_with_parent(argv: list[str]) -> list[str]:
    """Prefix `setpriv --pdeathsig TERM` (util-linux) so rsync stops if this process is killed outright.

    The `except BaseException` in run_rsync covers every death Python sees; a
    SIGKILL or an OOM kill of the step process it does not, and rsync, in its
    own session, would go on writing into the destination while a retry starts
    another. The death signal goes to rsync when the thread that started it
    ends, and that thread waits in run_rsync for as long as rsync runs.
    setpriv then execs rsync, so the process group and pid stay rsync's.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None or not sys.platform.startswith("linux"):
        return argv
    return [setpriv, "--pdeathsig", "TERM", "--", *argv]


def run_rsync(
    argv: Sequence[str],
    *,
    on_progress: Callable[[ProgressUpdate], None] | None = None,
    progress_interval: float = 5.0,
    on_line: Callable[[str], None] | None = None,
    on_stderr_line: Callable[[str], None] | None = None,
    description: str = "",
    endpoint: SshEndpoint | None = None,
    check: bool = True,
) -> RsyncResult:
    """Run rsync in its own process group, stream its output, and never leave it behind.

    `on_progress` gets at most one progress2 record per `progress_interval`
    seconds, plus the last one. `on_line` gets every other complete stdout line
    (listings); only the last lines are kept otherwise. On any exception,
    KeyboardInterrupt and Dagster's interruption included, the whole group
    (rsync, its forks and ssh) is terminated before the exception propagates.
    With `check`, a non-zero exit raises RsyncError (HostKeyError,
    TransferTerminated where they apply).
    """
    argv = [str(a) for a in argv]
    started = time.monotonic()
    last_progress: list[ProgressUpdate | None] = [None]
    reported: list[ProgressUpdate | None] = [None]
    next_report = [0.0]

    def on_stdout_record(record: str) -> bool:
        if "%" in record:
            update = parse_progress(record)
            if update is not None:
                last_progress[0] = update
                if on_progress is not None:
                    now = time.monotonic()
                    if now >= next_report[0]:
                        next_report[0] = now + progress_interval
                        reported[0] = update
                        on_progress(update)
                return True
        if on_line is not None:
            on_line(record)
        return False

    host_key_problem = [False]

    def on_stderr_record(record: str) -> bool:
        if _HOST_KEY_PATTERNS.search(record):
            host_key_problem[0] = True
        if on_stderr_line is not None:
            on_stderr_line(record)
        return False

    stdout = _Tail(_STDOUT_TAIL_LINES, on_stdout_record)
    stderr = _Tail(_STDERR_TAIL_LINES, on_stderr_record)
    env = dict(os.environ)
    env["LC_ALL"] = "C"  # rsync then escapes every non-ASCII byte in names, the same way everywhere

    if shutil.which(argv[0]) is None:
        raise RsyncError(f"{argv[0]} is not installed or not on PATH: install rsync and openssh-client",
                         exit_code=127)
    proc: subprocess.Popen[bytes] | None = None
    try:
        with _live_lock:
            proc = subprocess.Popen(
                _die_with_parent(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True, env=env, bufsize=0,
            )
            _live[proc.pid] = proc
        exit_code = _pump(proc, stdout, stderr)
        if on_progress is not None and last_progress[0] is not None and last_progress[0] is not reported[0]:
            on_progress(last_progress[0])
    except BaseException:
        if proc is not None:
            _kill_process_group(proc)
        raise
    finally:
        if proc is not None:
            with _live_lock:
                _live.pop(proc.pid, None)
                terminated = proc.pid in _terminated
                _terminated.discard(proc.pid)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()

    stdout_text = stdout.text()
    result = RsyncResult(
        exit_code=exit_code,
        stats=parse_stats(stdout_text) if has_stats(stdout_text) else None,
        stdout_tail=stdout_text,
        stderr="\n".join(_redact(stderr.lines)),
        duration_seconds=time.monotonic() - started,
        last_progress=last_progress[0],
        argv=argv,
    )
    if check and exit_code != 0:
        raise _error_for(exit_code, list(stderr.lines), description=description,
                         host_key_problem=host_key_problem[0], terminated=terminated, endpoint=endpoint,
                         result=result)
    return result


# -- manifests ----------------------------------------------------------------


def is_transferred_name(name: str) -> bool:
    """Whether rsync's `--include .info --exclude .*` lets a file or folder of this basename through."""
    return not name.startswith(".") or name == KEPT_HIDDEN_NAME


def local_manifest(destination: Path) -> dict[str, int]:
    """Relative path -> size of every regular file under `destination` that a transfer could have put there.

    Same filter as the transfer: any path component starting with `.` hides
    the file, except one named exactly `.info` (so `.rsync-partial/` and rsync
    temp files never count). Symlinks are not followed. A missing destination
    is an empty manifest.
    """
    manifest: dict[str, int] = {}
    stack: list[tuple[str, str]] = [(os.fspath(destination), "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            it = os.scandir(folder)
        except FileNotFoundError:
            continue
        with it:
            for entry in it:
                if not is_transferred_name(entry.name):
                    continue
                relative = prefix + entry.name
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, relative + "/"))
                elif entry.is_file(follow_symlinks=False):
                    manifest[relative] = entry.stat(follow_symlinks=False).st_size
    return manifest


@dataclass
class ManifestDiff:
    """How a destination differs from the source: what is missing or has the wrong size (and what is extra)."""

    missing: list[str]
    size_mismatch: list[tuple[str, int, int]]
    extra: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every source file is in the destination with the same size (extra files are fine)."""
        return not self.missing and not self.size_mismatch

    def summary(self, limit: int = 20) -> str:
        """A readable report: counts, then at most `limit` examples of each problem."""
        if self.ok:
            head = "destination matches the source"
            return head + (f" ({len(self.extra)} extra file(s) in the destination)" if self.extra else "")
        lines = [f"{len(self.missing)} missing, {len(self.size_mismatch)} with a different size"
                 + (f", {len(self.extra)} extra" if self.extra else "")]
        for path in self.missing[:limit]:
            lines.append(f"  missing: {path}")
        if len(self.missing) > limit:
            lines.append(f"  ... and {len(self.missing) - limit} more missing")
        for path, expected, actual in self.size_mismatch[:limit]:
            lines.append(f"  size differs: {path} (source {expected} bytes, destination {actual} bytes)")
        if len(self.size_mismatch) > limit:
            lines.append(f"  ... and {len(self.size_mismatch) - limit} more with a different size")
        return "\n".join(lines)


def compare_manifests(expected: Mapping[str, int], actual: Mapping[str, int]) -> ManifestDiff:
    """Compare the source manifest with the destination's."""
    missing = sorted(p for p in expected if p not in actual)
    mismatch = sorted((p, size, actual[p]) for p, size in expected.items() if p in actual and actual[p] != size)
    extra = sorted(p for p in actual if p not in expected)
    return ManifestDiff(missing=missing, size_mismatch=mismatch, extra=extra)


# -- the client the assets use ------------------------------------------------


class SftpClient:
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
            passed_over = _SKIPPED_NON_REGULAR.match(line)
            if passed_over:
                skipped.append(_unescape_name(passed_over.group(1)))

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
