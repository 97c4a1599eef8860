"""The watch beside the rsyncs of a process: rsync never outlives its step's ability to beat.

rsync runs in a session of its own (so that a run's termination can end its whole
group), which also means that stopping the step (SIGSTOP, a job-control stop of the
worker's process group, a debugger) leaves rsync writing. The step's heartbeat then goes
stale, the sweep ends its run after HEARTBEAT_LIMIT_SECONDS (claims.py, 30 s) and another
run may take the EPN's claim: two rsyncs into one destination. So the first `run_rsync` of
a process starts this script as its child, in a session of its own (a stop of the
worker's group does not reach it), and tells it each rsync's process group as it starts
and ends (`+PGID` and `-PGID` lines on its stdin: a pipe write, no process per rsync).
It ends the groups it watches (SIGTERM, SIGKILL after a grace) when the process that
started them

- has been stopped (state `T` or `t` in /proc) for more than STOPPED_STEP_LIMIT_SECONDS,
  well inside the heartbeat limit: with the grace, rsync is gone before the run can be
  judged gone and its EPN taken over; or
- was frozen with this watch (a paused container or cgroup: no process of it ran) for more
  than that limit, seen as a gap between two of the watch's looks; or
- is gone (its stdin closes; the parent-death signal, `setpriv --pdeathsig TERM`, has
  already told rsync: this adds the SIGKILL after the grace). The watch then ends too.

Before ending a group it writes `PGID why` on its stdout, which `run_rsync` adds to that
rsync's error.

It also removes, once the process is gone, the private folders it was told of (`>HEX` and
`<HEX` lines: the folder's path in hex): the folder of a shared ssh connection
(connection.py), whose `finally` a SIGKILL or an OOM kill never reaches. Only what such a
folder holds is removed (its files and sockets, then the folder); a folder that is a
symlink, or holds a folder, is left as it is.

The watch is its parent's child, so it shares its PID namespace; it reads the parent's
state through /proc/self/stat's parent field, which numbers the parent as the mounted /proc
does, even where that /proc belongs to another namespace. Where /proc cannot be read it
cannot see a stop and ends nothing: a stop is then left to the heartbeat (claims.Heartbeat
stops the rsyncs of a run ended elsewhere at its next beat).

Standard library only: run as `python -I -S stepwatch.py LIMIT GRACE`.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import stat
import sys
import time

# How long the process that started rsync (the step) may stay stopped before its rsyncs are
# ended: well inside claims.HEARTBEAT_LIMIT_SECONDS (30 s), with the SIGTERM grace (5 s) on top.
STOPPED_STEP_LIMIT_SECONDS = 10.0
POLL_SECONDS = 0.25


def group_alive(pgid: int) -> bool:
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
        fields = _stat_fields(name)
        if fields is not None and len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def _stat_fields(pid: str) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None when unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].split()  # the command name may hold spaces and parentheses


def end_groups(pgids: set[int], grace: float) -> None:
    """SIGTERM the process groups (rsync then saves its partial file), SIGKILL what is left after `grace`."""
    alive = set(pgids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        deadline = time.monotonic() + grace
        while True:
            alive = {pgid for pgid in alive if group_alive(pgid)}
            if not alive:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)


def remove_folder(folder: bytes) -> None:
    """Remove `folder`'s files and sockets, then the folder; never through a symlink, never deeper."""
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            return
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        with contextlib.suppress(OSError):  # a folder inside: unlink refuses it, and rmdir below fails
            os.unlink(os.path.join(folder, name))
    with contextlib.suppress(OSError):
        os.rmdir(folder)


def _say(pgids: set[int], why: str) -> None:
    for pgid in sorted(pgids):
        # Once the process is gone nobody reads this (EPIPE): the groups are ended all the same.
        with contextlib.suppress(OSError):
            os.write(1, f"{pgid} {why}\n".encode())


def watch(limit: float, grace: float) -> None:
    """Watch the parent until its stdin closes, ending the groups it names as the module says."""
    parent = os.getppid()
    own = _stat_fields("self")
    parent_in_proc = own[1].decode() if own is not None and len(own) > 1 else None
    watched: set[int] = set()
    folders: set[bytes] = set()
    pending = b""
    stopped_since: float | None = None
    looked = time.monotonic()
    while True:
        watching = bool(watched)
        ready, _, _ = select.select([0], [], [], POLL_SECONDS if watching else None)
        now = time.monotonic()
        if watching and now - looked > limit + POLL_SECONDS:
            # This watch did not run for longer than the limit: frozen with the process it
            # watches (a paused container or cgroup), and rsync with them; ended before it writes on.
            _say(watched, f"rsync ended: it was frozen with the process that started it for {now - looked:.0f} s")
            end_groups(watched, grace)
            watched.clear()
        looked = now
        if ready:
            data = os.read(0, 4096)
            if not data:  # the parent is gone
                if watched:
                    _say(watched, f"rsync ended: the process that started it (pid {parent}) is gone")
                    end_groups(watched, grace)
                for folder in folders:
                    remove_folder(folder)
                return
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                if line[:1] == b"+":
                    watched.add(int(line[1:]))
                elif line[:1] == b"-":
                    watched.discard(int(line[1:]))
                elif line[:1] == b">":
                    folders.add(bytes.fromhex(line[1:].decode()))
                elif line[:1] == b"<":
                    folders.discard(bytes.fromhex(line[1:].decode()))
        fields = _stat_fields(parent_in_proc) if watched and parent_in_proc else None
        if fields is None or fields[0] not in (b"T", b"t"):
            stopped_since = None
            continue
        stopped_since = stopped_since or now
        if now - stopped_since > limit:
            _say(
                watched,
                f"rsync ended: the process that started it (pid {parent}) was stopped for more than {limit:g} s, "
                "so its run's heartbeat stopped too and another run may take the EPN over",
            )
            end_groups(watched, grace)
            watched.clear()


def main(argv: list[str]) -> int:
    watch(float(argv[1]), float(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
