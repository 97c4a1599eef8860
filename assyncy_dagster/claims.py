"""Who is transferring what: each transfer step's heartbeat, and its claim on each EPN.

Both live in the Dagster instance's key-value table (`kvs`, in the run storage),
which every process that runs or watches transfers shares, on SQLite as on
PostgreSQL, on one host or on many:

- `assyncy/heartbeat/<run id>`: when (epoch seconds) the run's transfer step last
  said it was alive. A thread of the step writes it every HEARTBEAT_SECONDS and
  removes it when the step ends.
- `assyncy/claim/<epn>`: the id of the run transferring the EPN. Taken with one
  INSERT (the table's key is unique, so of two runs asking at once exactly one
  gets it), given back with one DELETE of the holder's own row, and taken over
  from a holder that is gone with one UPDATE conditional on the old holder. Each
  is a single statement, atomic on SQLite and on PostgreSQL alike. (Dagster's
  concurrency slots are not: their claim reads a free slot and then writes it,
  and on PostgreSQL two runs can both write the same slot.)
- `assyncy/batch/<run id>`: the id of the run changing that batch run's EPN list,
  claimed the same way and held only for the few statements of the change.

A run's worker is gone only on positive evidence (`why_gone`): its heartbeat is
older than HEARTBEAT_LIMIT_SECONDS, or its process, tagged with the host name and
the PID namespace it ran in, is looked at from that same host and namespace and
is dead or another process. Not being able to look (another host, another PID
namespace, a system without /proc, an unreadable /proc) is never evidence. The
heartbeat's age is measured with two hosts' clocks when the worker runs
elsewhere: keep them in time (NTP), as Dagster's own schedules need.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import dagster as dg
from dagster._core.storage.runs.schema import KeyValueStoreTable
from dagster._core.storage.runs.sql_run_storage import SqlRunStorage
from sqlalchemy import exc as db_exc

from .transfer import terminate_all_transfers

WORKER_TAG = "assyncy/worker"
HEARTBEAT_PREFIX = "assyncy/heartbeat/"
CLAIM_PREFIX = "assyncy/claim/"
BATCH_PREFIX = "assyncy/batch/"
BATCH_WAIT_STEP_SECONDS = 0.02
# A step beats every 5 s; a heartbeat older than 30 s (six beats missed) means the worker is gone.
# epn_sensor looks every 30 s, so a worker killed outright is noticed within a minute, while a
# worker slowed by a loaded host or a busy database for up to half a minute is still alive.
HEARTBEAT_SECONDS = 5.0
HEARTBEAT_LIMIT_SECONDS = 30.0
# A heartbeat this old (two beats missed) is not proof of death on its own, but it corroborates
# another sign (a Celery worker node that stopped answering pings, see run_records).
HEARTBEAT_QUIET_SECONDS = 2 * HEARTBEAT_SECONDS
_WATCHED = (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)

log = logging.getLogger("assyncy.claims")


# -- the worker process ---------------------------------------------------------


def _pid_namespace() -> str | None:
    """This process's PID namespace (the inode of /proc/self/ns/pid), or None where there is none to read."""
    try:
        link = os.readlink("/proc/self/ns/pid")  # e.g. 'pid:[4026531836]'
    except OSError:
        return None
    return link.removeprefix("pid:[").removesuffix("]") or None


def _observe(pid: int) -> tuple[bool, str | None]:
    """(could look, start time in clock ticks since boot): (True, None) when the process is
    certainly gone (no such pid, or a zombie), (False, None) when /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return (os.path.isdir("/proc/self"), None)  # no such process, if /proc is there at all
    except (OSError, IndexError):
        return (False, None)
    if fields and fields[0] == b"Z":
        return (True, None)  # a zombie has finished; its parent just has not reaped it
    if len(fields) <= 19:
        return (False, None)
    return (True, fields[19].decode())


def _start_ticks(pid: int) -> str | None:
    return _observe(pid)[1]


def this_worker() -> str:
    """`host:pid:start:pid-namespace` of this process, for the run's WORKER_TAG ('?' for what cannot be read).

    A pid alone is not an identity: after a crash the number may be reused, and in
    another PID namespace (a container, `unshare --pid`) it names another process."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or '?'}:{_pid_namespace() or '?'}"


def worker_is_gone(worker: str) -> bool:
    """Whether the worker named by a WORKER_TAG is known dead: only a worker tagged with this
    host *and* this PID namespace, whose start time was read when it began, can be checked, and it
    is gone when /proc here says its pid is free or belongs to a process started at another time.
    Anything else (another host or namespace, an old tag without a namespace, '?') is not evidence."""
    parts = worker.split(":")
    if len(parts) != 4:
        return False
    host, pid, start, namespace = parts
    if host != socket.gethostname() or not pid.isdigit() or "?" in (start, namespace) or not start:
        return False
    if namespace != _pid_namespace():
        return False
    looked, now_start = _observe(int(pid))
    return looked and now_start != start


def why_gone(run: dg.DagsterRun, heartbeat: float | None, now: float | None = None) -> str | None:
    """Why the worker of a started run is known to be gone, or None: the one rule the sensor's
    sweep and a claim's expiry both ask. `heartbeat`: the run's last heartbeat (see `heartbeats`)."""
    if run.status not in _WATCHED:
        return None
    now = time.time() if now is None else now
    if heartbeat is not None and now - heartbeat > HEARTBEAT_LIMIT_SECONDS:
        return (
            f"its transfer step's heartbeat stopped {now - heartbeat:.0f} s ago "
            f"(limit {HEARTBEAT_LIMIT_SECONDS:g} s): its worker was killed, crashed or is cut off"
        )
    worker = run.tags.get(WORKER_TAG)
    if worker and worker_is_gone(worker):
        return f"its worker process ({worker.rsplit(':', 2)[0]}) is gone: killed or crashed"
    return None


# -- the instance's key-value table ----------------------------------------------


def _storage(instance: dg.DagsterInstance) -> SqlRunStorage:
    storage = instance.run_storage
    if not isinstance(storage, SqlRunStorage):
        raise TypeError(f"EPN claims need a SQL run storage (SQLite or PostgreSQL), not {type(storage).__name__}")
    return storage


def _insert(storage: SqlRunStorage, key: str, value: str) -> bool:
    """Insert `key` if no row has it: True when this call did."""
    try:
        with storage.connect() as conn:
            conn.execute(KeyValueStoreTable.insert().values(key=key, value=value))
    except db_exc.IntegrityError:
        return False
    return True


def _replace(storage: SqlRunStorage, key: str, old: str, new: str) -> bool:
    """Set `key` to `new` only if it still holds `old`: True when this call did."""
    table = KeyValueStoreTable
    with storage.connect() as conn:
        result: Any = conn.execute(table.update().where(table.c.key == key, table.c.value == old).values(value=new))
        return result.rowcount == 1


def _delete(storage: SqlRunStorage, keys: Iterable[str], value: str | None = None) -> None:
    """Delete `keys` (only the rows holding `value`, when given)."""
    table = KeyValueStoreTable
    keys = list(keys)
    if not keys:
        return
    query = table.delete().where(table.c.key.in_(keys))
    if value is not None:
        query = query.where(table.c.value == value)
    with storage.connect() as conn:
        conn.execute(query)


# -- heartbeats -------------------------------------------------------------------


def heartbeats(instance: dg.DagsterInstance, run_ids: Iterable[str]) -> dict[str, float]:
    """Run id -> its transfer step's last heartbeat (epoch seconds), for the runs that have one."""
    keys = {HEARTBEAT_PREFIX + run_id for run_id in run_ids}
    if not keys:
        return {}
    found = {}
    for key, value in _storage(instance).get_cursor_values(keys).items():
        try:
            found[key[len(HEARTBEAT_PREFIX) :]] = float(value)
        except ValueError:
            continue  # not ours to judge: no evidence either way
    return found


class Heartbeat:
    """While a transfer step runs: its run's heartbeat, written now and then every
    HEARTBEAT_SECONDS by a daemon thread, and removed when the step ends (however it ends;
    a worker killed outright leaves it to go stale, which is how the sweep knows).

    A run ended by someone else while its step still runs (the sweep judged its worker gone:
    stopped, or cut off from the database, past the limit) may have lost its claims to
    another run: at its next beat the step stops its rsyncs at once and beats no more."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str, logger: Any = None) -> None:
        self._instance = instance
        self._run_id = run_id
        self._storage = _storage(instance)
        self._key = HEARTBEAT_PREFIX + run_id
        self._log = logger or log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"assyncy-heartbeat-{run_id[:8]}", daemon=True)

    def beat(self) -> None:
        self._storage.set_cursor_values({self._key: f"{time.time():.3f}"})

    def _loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                if self._ended_elsewhere():
                    return
                self.beat()
            except Exception as exc:  # the database is busy or away: say so, and beat again
                self._log.warning(f"assyncy: this run's heartbeat could not be written (trying again): {exc}")

    def _ended_elsewhere(self) -> bool:
        run = self._instance.get_run_by_id(self._run_id)
        if run is None or not run.is_finished:
            return False
        stopped = terminate_all_transfers()
        self._log.error(
            f"assyncy: run {self._run_id} was ended ({run.status.value}) while its step still ran, its worker "
            f"judged gone; stopped its {stopped} rsync(s) at once: another run may hold its EPNs now"
        )
        return True

    def __enter__(self) -> Heartbeat:
        self.beat()  # before anything is claimed, so that every claim's holder has a heartbeat
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=HEARTBEAT_SECONDS)
        try:
            _delete(self._storage, [self._key])
        except Exception as exc:  # left behind, it only goes stale: an ended run is never judged by it
            self._log.warning(f"assyncy: this run's heartbeat could not be removed: {exc}")


# -- claims -----------------------------------------------------------------------


def claim_holder_gone(instance: dg.DagsterInstance, holder: str) -> str | None:
    """Why the run holding a claim no longer transfers anything (its claim has expired), or None.

    A run that ended from outside (the sweep, on a Celery worker that stopped answering; a
    terminate) while its step still beats may have a worker that is only paused or cut off, with
    an rsync still writing: its claim holds until that heartbeat stops (HEARTBEAT_LIMIT_SECONDS,
    by when transfer/stepwatch.py has ended a stopped step's rsync) or its worker is seen dead.
    A step that ends gives its claims back and removes its heartbeat itself."""
    run = instance.get_run_by_id(holder)
    if run is None:
        return "its run no longer exists"
    beat = heartbeats(instance, [holder]).get(holder)
    if run.is_finished:
        worker = run.tags.get(WORKER_TAG)
        if (
            beat is not None
            and time.time() - beat <= HEARTBEAT_LIMIT_SECONDS
            and not (worker and worker_is_gone(worker))
        ):
            return None
        return f"its run ended ({run.status.value})"
    return why_gone(run, beat)


def claim_epn(instance: dg.DagsterInstance, epn: str, run_id: str, logger: Any = None) -> str | None:
    """Take run `run_id`'s exclusive claim on `epn` before any rsync into it: None when this run
    holds it now, else the id of the run that does. A claim whose run ended, or whose worker is
    gone (`why_gone`), has expired and is taken over, with a log line naming it."""
    return _claim(instance, CLAIM_PREFIX + epn, f"EPN {epn}", run_id, logger)


def release_epn(instance: dg.DagsterInstance, epn: str, run_id: str) -> None:
    """Give back run `run_id`'s claim on `epn` (a claim another run took over stays that run's)."""
    _delete(_storage(instance), [CLAIM_PREFIX + epn], value=run_id)


@contextlib.contextmanager
def batch_held(instance: dg.DagsterInstance, batch_run_id: str, run_id: str, wait: float) -> Iterator[bool]:
    """Hold, for run `run_id`, the claim on the EPN list of batch run `batch_run_id` (its EPNs'
    `queued`/`skipped` tags and whether its step has begun), waiting up to `wait` seconds for
    another holder: True while held, False if it could not be had. The batch run holds it while
    its step begins; a run taking one of its queued EPNs holds it while it tags it `skipped`.
    So every EPN of a batch is brought home by exactly one of them (assets/repatriation.py)."""
    key, deadline = BATCH_PREFIX + batch_run_id, time.monotonic() + wait
    while _claim(instance, key, f"the EPN list of run {batch_run_id}", run_id) is not None:
        if time.monotonic() >= deadline:
            yield False
            return
        time.sleep(BATCH_WAIT_STEP_SECONDS)
    try:
        yield True
    finally:
        _delete(_storage(instance), [key], value=run_id)


def _claim(instance: dg.DagsterInstance, key: str, what: str, run_id: str, logger: Any = None) -> str | None:
    """Claim `key` for run `run_id` (see claim_epn; `what` names it in the log)."""
    storage = _storage(instance)
    holder: str | None = None
    for _ in range(5):  # another run may take or give it back between two statements: look again
        if _insert(storage, key, run_id):
            return None
        holder = storage.get_cursor_values({key}).get(key)
        if holder is None:
            continue
        if holder == run_id:
            return None
        why = claim_holder_gone(instance, holder)
        if why is None:
            return holder
        if _replace(storage, key, holder, run_id):
            (logger or log).warning(f"{what}: took over the claim of run {holder}: {why}")
            return None
    # Still contended after five looks: another run has it, or is about to; never assume it is free.
    return holder or "(another run: the claim changed hands while this run asked for it)"


def claims(instance: dg.DagsterInstance, epns: Iterable[str]) -> dict[str, str]:
    """EPN -> the run id holding its claim, for the claimed ones among `epns`."""
    keys = {CLAIM_PREFIX + epn for epn in epns}
    if not keys:
        return {}
    return {k[len(CLAIM_PREFIX) :]: v for k, v in _storage(instance).get_cursor_values(keys).items()}


def forget_run(instance: dg.DagsterInstance, run_id: str, epns: Iterable[str]) -> None:
    """Remove an ended run's heartbeat and its claims on `epns` (the sweep, for a run it ended)."""
    storage = _storage(instance)
    _delete(storage, [CLAIM_PREFIX + epn for epn in epns], value=run_id)
    _delete(storage, [HEARTBEAT_PREFIX + run_id])
