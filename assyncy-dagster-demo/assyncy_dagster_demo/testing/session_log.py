"""Record each ssh session of the local sshd, on the SFTP host's side: when it started, when it ended, what it ran.

Used as the outermost part of the local sshd's ForceCommand
(`python3 session_log.py LOG_FILE rrsync -ro ROOT`, see `LocalSshd(record_sessions=True)`):
every session appends a `start` line before it runs the forced command and an
`end` line when that command has exited, so a test counts the transfers that
were running at once from what the host saw, not from what Dagster says it
scheduled. Each line is written with one `write()` to a file opened with
`O_APPEND`, so the lines of sessions running at once never mix:

    start <session> <CLOCK_MONOTONIC ns> <epoch s> <SSH_ORIGINAL_COMMAND, JSON-quoted>
    end <session> <CLOCK_MONOTONIC ns> <epoch s> <exit status>

where `<session>` is `<pid>.<start ns>` (unique even if a pid is reused).

CLOCK_MONOTONIC is one clock for every process of the machine, so the
sessions' times compare with each other (and with `time.monotonic_ns()` in the
test). The script runs as the SFTP account with the system python3, standard
library only; `read_sessions`, `most_at_once` and `seconds_at_once` are the test's side.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


def _append(log_file: str, *fields: object) -> None:
    line = (" ".join(str(f) for f in fields) + "\n").encode("utf-8", "surrogateescape")
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def main() -> int:
    log_file, command = sys.argv[1], sys.argv[2:]
    started = time.monotonic_ns()
    session = f"{os.getpid()}.{started}"
    original = json.dumps(os.environ.get("SSH_ORIGINAL_COMMAND", ""))
    _append(log_file, "start", session, started, f"{time.time():.6f}", original)
    proc = subprocess.Popen(command)  # stdin, stdout and stderr are the session's
    # sshd ends a session by closing its channel (the command sees end of file); a signal
    # that reaches this process goes on to the command, so the end is still recorded.
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, lambda received, _frame: proc.send_signal(received))
    status = proc.wait()
    _append(log_file, "end", session, time.monotonic_ns(), f"{time.time():.6f}", status)
    return status if status >= 0 else 128 - status


# -- the test's side ----------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """One ssh session as the host saw it; `end` is None while it runs (or if it was killed)."""

    session: str  # <pid>.<start ns>
    start: float  # CLOCK_MONOTONIC seconds
    end: float | None
    command: str  # SSH_ORIGINAL_COMMAND: what the client asked the forced command to run
    status: int | None


def read_sessions(log_file: Path) -> list[Session]:
    """The sessions of `log_file`, in the order they started."""
    starts: dict[str, tuple[float, str]] = {}
    ends: dict[str, tuple[float, int]] = {}
    sessions: list[Session] = []
    if not Path(log_file).exists():
        return sessions
    for line in Path(log_file).read_text(errors="surrogateescape").splitlines():
        kind, session, mono, _epoch, rest = line.split(" ", 4)
        if kind == "start":
            starts[session] = (int(mono) / 1e9, json.loads(rest))
        elif kind == "end":
            ends[session] = (int(mono) / 1e9, int(rest))
    for session, (start, command) in starts.items():
        ended = ends.get(session)
        sessions.append(
            Session(
                session=session,
                start=start,
                end=ended[0] if ended else None,
                command=command,
                status=ended[1] if ended else None,
            )
        )
    return sorted(sessions, key=lambda s: s.start)


def _edges(sessions: list[Session], until: float | None) -> list[tuple[float, int]]:
    """+1 at each start, -1 at each end, in time order; at a tie an end comes first (touching is not overlapping)."""
    edges: list[tuple[float, int]] = []
    for s in sessions:
        end = s.end if s.end is not None else until if until is not None else float("inf")
        edges += [(s.start, 1), (end, -1)]
    return sorted(edges)


def most_at_once(sessions: list[Session], until: float | None = None) -> int:
    """The most `sessions` that were running at one instant (a session still running ends at `until`)."""
    peak = running = 0
    for _, step in _edges(sessions, until):
        running += step
        peak = max(peak, running)
    return peak


def seconds_at_once(sessions: list[Session], until: float | None = None) -> dict[int, float]:
    """How long exactly k of `sessions` were running, for each k >= 1 that occurred."""
    spent: dict[int, float] = {}
    running, since = 0, 0.0
    for at, step in _edges(sessions, until):
        if running and at > since:
            spent[running] = spent.get(running, 0.0) + (at - since)
        running, since = running + step, at
    return dict(sorted(spent.items()))


if __name__ == "__main__":
    sys.exit(main())
