"""Running rsync: in its own process group, its output streamed, and never left behind.

The only module of the package with global state: the registry of live rsync
process groups, so that `terminate_all_transfers` (a service shutdown) can
stop every transfer at once from any thread or a signal handler; and the
process's watch (stepwatch.py), told of each rsync as it starts and ends, which
ends them if this process is stopped for longer than STOPPED_STEP_LIMIT_SECONDS.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .endpoint import SshEndpoint
from .errors import HOST_KEY_PATTERNS, RsyncError, error_for, redact
from .manifests import Entry
from .parsing import ProgressUpdate, TransferStats, has_stats, may_be_progress, parse_progress, parse_stats
from .stepwatch import STOPPED_STEP_LIMIT_SECONDS, group_alive, remove_folder

# How long rsync gets to save its partial file after SIGTERM before SIGKILL.
TERMINATE_GRACE_SECONDS = 5.0
_READ_CHUNK = 1 << 16
_GATHER_SECONDS = 0.005  # between reads of a drained pipe (see _pump)
# rsync's stdout pipe: room for what it writes while _pump gathers (a no-op re-sync itemizes about
# 6 MB/s: Linux's default 64 KiB fill in 10 ms and would stop rsync; 1 MiB is the default ceiling).
_PIPE_BYTES = 1 << 20
_MAX_PENDING = 1 << 16  # longest unterminated output record we keep
_STDOUT_TAIL_LINES = 200
_STDERR_TAIL_LINES = 60


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
    # Every entry the transfer covered, as it is at the source (files with the sender's
    # checksum when this run sent them; folders; symlinks; special files rsync passed over).
    tree: dict[str, Entry] | None = None
    # Files whose data came over in this run: (path, whether it was new at the destination).
    sent: list[tuple[str, bool]] = field(default_factory=list)
    # How many rsyncs ran at once for this transfer (see streams.py).
    streams: int = 1


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


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_group(proc: subprocess.Popen, signum: int = signal.SIGTERM, grace: float = 30.0) -> None:
    """Send `signum` to the process group `proc` leads (a daemon, a worker, `dagster dev`),
    wait up to `grace` for the group to empty, then SIGKILL whatever is left and reap `proc`.

    For the servers the demo, the tests and the benchmarks start in sessions of their own."""
    pgid = proc.pid
    _signal_group(pgid, signum)
    deadline = time.monotonic() + grace
    try:
        # Children (a run worker cleaning up its rsync) may outlive the leader by a moment.
        while (proc.poll() is None or group_alive(pgid)) and time.monotonic() < deadline:
            time.sleep(0.1)
    except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
        pass
    if proc.poll() is None or group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)
    proc.wait()


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.005
    while group_alive(pgid):
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
    return terminate_transfers(None, grace)


def terminate_transfers(pgids: Iterable[int] | None, grace: float = TERMINATE_GRACE_SECONDS) -> int:
    """Stop the running rsyncs of these process groups (all of them for None), as terminate_all_transfers."""
    with _live_lock:
        pgids = list(_live) if pgids is None else [pgid for pgid in pgids if pgid in _live]
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
        self.pending = data[last + 1 :][-_MAX_PENDING:]
        self._records(data[: last + 1])

    def _records(self, block: bytes) -> None:
        text = block.decode("utf-8", "replace")
        on_record = self.on_record
        append = self.lines.append
        # Split at both ends of line; str methods, not a regular expression: a quarter of the time.
        for record in text.replace("\r", "\n").split("\n"):
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


class _ExitNotice:
    """Waits up to a timeout for a process to exit: on its pidfd (Linux 5.3+), else a plain sleep."""

    def __init__(self, pid: int):
        try:
            self._fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self._fd = -1

    def __enter__(self) -> _ExitNotice:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)

    def wait(self, seconds: float) -> None:
        if self._fd < 0:
            time.sleep(seconds)
        else:
            select.select([self._fd], [], [], seconds)


def _pump(proc: subprocess.Popen[bytes], stdout: _Tail, stderr: _Tail) -> int:
    """Read rsync's stdout and stderr in large chunks until both close; return its exit code."""
    streams = {proc.stdout.fileno(): stdout, proc.stderr.fileno(): stderr}  # type: ignore[union-attr]
    with selectors.DefaultSelector() as selector, _ExitNotice(proc.pid) as exited:
        for fd in streams:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        exited_at: float | None = None
        while streams:
            drained = False
            for key, _ in selector.select(timeout=1.0):
                try:
                    data = os.read(key.fd, _READ_CHUNK)
                except BlockingIOError:
                    continue
                if data:
                    streams[key.fd].feed(data)
                    drained = drained or len(data) < _READ_CHUNK
                else:
                    selector.unregister(key.fd)
                    del streams[key.fd]
            if drained:
                # rsync writes a line per file: woken for each, this process would read 300 bytes at a
                # time and take a core from rsync. Letting lines gather costs at most this much
                # latency, and none once rsync has exited (its last lines are read at once).
                exited.wait(_GATHER_SECONDS)
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


_STEPWATCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stepwatch.py")
# This process's watch (stepwatch.py), started with its first rsync; a forked child starts its own.
_watch: subprocess.Popen[bytes] | None = None
_watch_owner = 0
_watch_said: dict[int, str] = {}
_watch_pending = [b""]


def _start_watch() -> subprocess.Popen[bytes] | None:
    """Start this process's watch, or None where it cannot run (not Linux, no /proc)."""
    if not sys.platform.startswith("linux") or not sys.executable or not os.path.isdir("/proc/self"):
        return None
    try:
        watch = subprocess.Popen(
            [sys.executable, "-I", "-S", _STEPWATCH, f"{STOPPED_STEP_LIMIT_SECONDS:g}", f"{TERMINATE_GRACE_SECONDS:g}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a stop of this process's group must not stop its watch
            bufsize=0,
        )
    except OSError:
        return None  # the heartbeat still stops the rsyncs of a run ended elsewhere (claims.py), only later
    os.set_blocking(watch.stdout.fileno(), False)  # type: ignore[union-attr]
    return watch


def _watching() -> bool:
    """Whether this process (not a parent it was forked from) has a watch running."""
    return _watch is not None and _watch_owner == os.getpid() and _watch.poll() is None


def start_watch() -> None:
    """Start this process's watch now if it has none. A step calls it as it begins: the watch's
    start (a Python interpreter, 15-20 ms of a core) then does not compete with its first
    rsync's ssh handshake, which it slowed by about as much (a no-op re-sync of 10,000 files)."""
    global _watch, _watch_owner
    with _live_lock:
        if not _watching():
            _watch, _watch_owner = _start_watch(), os.getpid()


@contextlib.contextmanager
def private_folder(prefix: str) -> Iterator[Path]:
    """A new private folder (mkdtemp: 0700) in the temp folder, removed when the context ends, and
    by this process's watch if the process is killed outright first (SIGKILL, an OOM kill: no
    `finally` runs then); either way by stepwatch.remove_folder, so it must hold only files and sockets."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    told = os.fsencode(folder).hex()
    with _live_lock:
        _tell_watch(f">{told}")
    try:
        yield folder
    finally:
        remove_folder(os.fsencode(folder))
        with _live_lock:
            _tell_watch(f"<{told}")


@contextlib.contextmanager
def watched_group(pgid: int) -> Iterator[None]:
    """Process group `pgid` (a helper in a session of its own: the shared ssh connection's master)
    ended by this process's watch as an rsync's is while the context lasts, when this process is
    stopped or frozen too long or dies: SIGTERM, SIGKILL after the grace, and only then are the
    private folders removed."""
    with _live_lock:
        _tell_watch(f"+{pgid}")
    try:
        yield
    finally:
        with _live_lock:
            _tell_watch(f"-{pgid}")
            _watch_verdict(pgid)


def _tell_watch(line: str) -> None:
    """Send the watch a line (with _live_lock held): `+PGID` or `-PGID`, `>HEX` or `<HEX` (a folder to
    remove should this process die, or no longer); the watch is started when there is none."""
    global _watch, _watch_owner
    if not _watching():
        if line[:1] in "-<":
            return
        _watch, _watch_owner = _start_watch(), os.getpid()
    if _watch is not None:
        try:
            _watch.stdin.write(f"{line}\n".encode())  # type: ignore[union-attr]
        except OSError:
            _watch = None


def _watch_verdict(pgid: int) -> str:
    """What the watch said it did to group `pgid` ('' when nothing), with _live_lock held."""
    if _watch is not None and _watch_owner == os.getpid():
        with contextlib.suppress(BlockingIOError, OSError):
            while data := _watch.stdout.read(4096):  # type: ignore[union-attr]
                *lines, _watch_pending[0] = (_watch_pending[0] + data).split(b"\n")
                for line in lines:
                    said_pgid, _, why = line.decode("utf-8", "replace").partition(" ")
                    if said_pgid.isdigit():
                        _watch_said[int(said_pgid)] = why
    return _watch_said.pop(pgid, "")


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
    on_start: Callable[[int], None] | None = None,
) -> RsyncResult:
    """Run rsync in its own process group, stream its output, and never leave it behind.

    `on_progress` gets at most one progress2 record per `progress_interval`
    seconds, plus the last one. `on_line` gets every other complete stdout line
    (listings); only the last lines are kept otherwise. On any exception,
    KeyboardInterrupt and Dagster's interruption included, the whole group
    (rsync, its forks and ssh) is terminated before the exception propagates.
    With `check`, a non-zero exit raises RsyncError (HostKeyError,
    TransferTerminated where they apply). `on_start` gets rsync's process
    group id as soon as it runs (for `terminate_transfers`).
    """
    argv = [str(a) for a in argv]
    started = time.monotonic()
    # The last progress record (raw), and the last one reported, if it was.
    last_record = [""]
    reported = [""]
    next_report = [0.0]

    def on_stdout_record(record: str) -> bool:
        # rsync prints a progress2 record after every file (100,000 for 100,000 files): only the one
        # reported now and then, and the last, are parsed (0.2 s of a core less for 100,000).
        if may_be_progress(record):
            now = time.monotonic()
            if now < next_report[0] or on_progress is None:
                last_record[0] = record
                return True
            update = parse_progress(record)
            if update is not None:
                last_record[0] = reported[0] = record
                next_report[0] = now + progress_interval
                on_progress(update)
                return True
        if on_line is not None:
            on_line(record)
        return False

    host_key_problem = [False]

    def on_stderr_record(record: str) -> bool:
        if HOST_KEY_PATTERNS.search(record):
            host_key_problem[0] = True
        if on_stderr_line is not None:
            on_stderr_line(record)
        return False

    stdout = _Tail(_STDOUT_TAIL_LINES, on_stdout_record)
    stderr = _Tail(_STDERR_TAIL_LINES, on_stderr_record)
    env = dict(os.environ)
    env["LC_ALL"] = "C"  # rsync then escapes every non-ASCII byte in names, the same way everywhere
    env["TZ"] = "UTC"  # and prints times (listings, %M) in UTC: parsing.py reads them so

    if shutil.which(argv[0]) is None:
        raise RsyncError(f"{argv[0]} is not installed or not on PATH: install rsync and openssh-client", exit_code=127)
    proc: subprocess.Popen[bytes] | None = None
    try:
        with _live_lock:
            proc = subprocess.Popen(
                _die_with_parent(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                env=env,
                bufsize=0,
            )
            _live[proc.pid] = proc
            _tell_watch(f"+{proc.pid}")
        with contextlib.suppress(OSError, AttributeError):  # best effort: a user's pipe quota may refuse it
            fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)  # type: ignore[union-attr]
        if on_start is not None:
            on_start(proc.pid)
        exit_code = _pump(proc, stdout, stderr)
        last_progress = parse_progress(last_record[0]) if last_record[0] else None
        if on_progress is not None and last_progress is not None and last_record[0] is not reported[0]:
            on_progress(last_progress)
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
                _tell_watch(f"-{proc.pid}")
                watched = _watch_verdict(proc.pid)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            if watched:
                stderr.lines.append(f"assyncy: {watched}")

    stdout_text = stdout.text()
    result = RsyncResult(
        exit_code=exit_code,
        stats=parse_stats(stdout_text) if has_stats(stdout_text) else None,
        stdout_tail=stdout_text,
        stderr="\n".join(redact(stderr.lines)),
        duration_seconds=time.monotonic() - started,
        last_progress=last_progress,
        argv=argv,
    )
    if check and exit_code != 0:
        raise error_for(
            exit_code,
            list(stderr.lines),
            description=description,
            host_key_problem=host_key_problem[0],
            terminated=terminated,
            endpoint=endpoint,
            result=result,
        )
    return result
