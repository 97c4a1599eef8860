"""Several data-mover hosts on one machine: the scale-out tests' and benchmark's pieces.

`etc/scale-out/dagster.yaml` with only the database address, the shared folders and
run monitoring's timings changed; the real `dagster-daemon`; Celery workers started
with `dagster-celery worker start` exactly as `assyncy-celery-worker.service` does,
each with a DAGSTER_HOME of its own holding the same dagster.yaml, and, where the
kernel lets us, a host name of its own (a UTS namespace), so that nothing on the
Dagster host can tell them from workers on other machines by their host name.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import yaml

from assyncy_dagster.etc_files import etc_path
from assyncy_dagster.logs import tail
from assyncy_dagster.transfer.process import stop_group

from .postgres import PostgresServer
from .processes import rsync_invocations_live

SCALE_OUT_ETC = etc_path("scale-out")
WORKER_UNIT = SCALE_OUT_ETC / "assyncy-celery-worker.service"
BIN = Path(sys.executable).parent
BROKER_ENV = "ASSYNCY_CELERY_BROKER_URL"
BACKEND_ENV = "ASSYNCY_CELERY_BACKEND_URL"
PASSWORD_ENV = "DAGSTER_PG_PASSWORD"
_READY = re.compile(r"\bready\.\s*$", re.MULTILINE)
_RECEIVED = re.compile(r"Task execute_job\[([0-9a-f-]{36})\] received")


def scale_out_instance_config(
    database: PostgresServer, shared: Path, dequeue_interval_seconds: int | None = None, **run_monitoring: object
) -> dict:
    """etc/scale-out/dagster.yaml for `database`, with the shared file system at `shared`.

    Secrets stay in the environment as in production (DAGSTER_PG_PASSWORD, the
    broker and backend URLs); `run_monitoring` overrides its timings, and
    `dequeue_interval_seconds` how often the daemon launches queued runs (5 s)."""
    config = yaml.safe_load((SCALE_OUT_ETC / "dagster.yaml").read_text())
    if dequeue_interval_seconds is not None:
        config["run_queue"] = {"dequeue_interval_seconds": dequeue_interval_seconds}
    config["storage"]["postgres"]["postgres_db"].update(
        hostname=database.host, port=database.port, db_name=database.database, username=database.username
    )
    config["local_artifact_storage"]["config"]["base_dir"] = str(shared / "dagster-storage")
    config["compute_logs"]["config"]["base_dir"] = str(shared / "dagster-storage" / "logs")
    config["run_monitoring"].update(run_monitoring)
    return config


def write_dagster_home(path: Path, config: Mapping) -> Path:
    """A DAGSTER_HOME holding `config` as its dagster.yaml (one per host)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "dagster.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


def worker_command(name: str, celery_yaml: Path, concurrency: int) -> list[str]:
    """The ExecStart of assyncy-celery-worker.service, with this install's bin folder,
    `celery_yaml`, the node name `name` and `--concurrency`."""
    [line] = [line for line in WORKER_UNIT.read_text().splitlines() if line.startswith("ExecStart=")]
    argv = shlex.split(line.partition("=")[2])
    argv[0] = str(BIN / Path(argv[0]).name)
    argv[argv.index("-y") + 1] = str(celery_yaml)
    argv[argv.index("-n") + 1] = name
    return [f"--concurrency={concurrency}" if arg.startswith("--concurrency=") else arg for arg in argv]


def own_host_names_work() -> bool:
    """Whether `unshare --uts` may give a process a host name of its own here (root, Linux)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    done = subprocess.run([unshare, "--uts", "--", "true"], check=False, capture_output=True)
    return done.returncode == 0


def spawn_logged(argv: list[str], log: Path, environ: Mapping[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """A background process in a session of its own (stopped with its whole group), its output in `log`."""
    with open(log, "w") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environ,
            cwd=cwd,
            start_new_session=True,
        )


@dataclass
class CeleryWorker:
    """One data-mover host: `dagster-celery worker start` in a session (and host name) of its own."""

    name: str
    home: Path
    env: dict[str, str]
    celery_yaml: Path
    concurrency: int = 1
    host: str | None = None  # a host name of its own (needs `own_host_names_work()`)
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def log(self) -> Path:
        return self.home / "worker.log"

    @property
    def node(self) -> str:
        """The Celery node name, as `-n NAME` makes it: NAME@host."""
        return f"{self.name}@{self.host or os.uname().nodename}"

    def argv(self) -> list[str]:
        command = worker_command(self.name, self.celery_yaml, self.concurrency)
        if self.host is None:
            return command
        return ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', self.host, *command]

    def start(self) -> CeleryWorker:
        # `dagster-celery worker start` runs `celery` from PATH: the install's bin folder must be on it.
        path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        environ = {**os.environ, "PATH": path, "DAGSTER_HOME": str(self.home), **self.env}
        self.proc = spawn_logged(self.argv(), self.log, environ, self.home)
        return self

    def ready(self) -> bool:
        """Whether the worker has connected to the broker and waits for runs."""
        return bool(_READY.search(self.log_text()))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def task_ids(self) -> set[str]:
        """The Celery task ids of the runs this worker took (from its log)."""
        return set(_RECEIVED.findall(self.log_text()))

    def kill(self) -> None:
        """SIGKILL the whole worker at once, as a host crash or the OOM killer of a cgroup would."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            # SIGTERM is Celery's warm shutdown (it waits for the running run); a few seconds, then SIGKILL.
            stop_group(self.proc, signal.SIGTERM, grace=5)


@dataclass
class DagsterDaemon:
    """The real `dagster-daemon run -m assyncy_dagster.definitions`, as on the Dagster host."""

    home: Path
    env: dict[str, str]
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def log(self) -> Path:
        return self.home / "daemon.log"

    def start(self) -> DagsterDaemon:
        environ = {**os.environ, "DAGSTER_HOME": str(self.home), **self.env}
        argv = [str(BIN / "dagster-daemon"), "run", "-m", "assyncy_dagster.definitions"]
        self.proc = spawn_logged(argv, self.log, environ, self.home)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, signal.SIGTERM, grace=30)


def rsync_invocations(text: str) -> set[int]:
    """Pids of the live rsync invocations whose command line contains `text` (a destination)."""
    return {pid for pid, cmdline in rsync_invocations_live() if text in " ".join(cmdline)}


class ConcurrencyWatch:
    """Samples in a thread, every `interval` seconds, how many rsyncs into `destination` are
    alive at once (whichever host runs them: here all are on this machine), and, with
    `slots` (a callable returning the rsync pool's claimed slots), the pool's use."""

    def __init__(self, destination: Path, slots=None, interval: float = 0.1):
        self.destination = str(destination)
        self.slots = slots
        self.interval = interval
        self.most_rsyncs = 0
        self.most_slots = 0
        self.samples = 0
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="concurrency-watch", daemon=True)

    def _run(self) -> None:
        next_slots = 0.0
        while not self._stop.is_set():
            now = rsync_invocations(self.destination)
            self.seen |= now
            self.most_rsyncs = max(self.most_rsyncs, len(now))
            self.samples += 1
            if self.slots is not None and time.monotonic() >= next_slots:
                with contextlib.suppress(Exception):  # a sample lost to a busy database is no finding
                    self.most_slots = max(self.most_slots, self.slots())
                next_slots = time.monotonic() + 0.5
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@dataclass
class Site:
    """A running scaled-out set-up: the daemon (the Dagster host), the workers (the data
    movers), and an instance on the shared database to watch them with."""

    daemon: DagsterDaemon
    workers: list[CeleryWorker]
    instance: object  # dg.DagsterInstance, opened on the daemon's dagster.yaml

    def worker_for_host(self, host: str) -> CeleryWorker:
        [found] = [w for w in self.workers if w.host == host]
        return found

    def worker_of_task(self, task_id: str) -> CeleryWorker | None:
        """The worker whose log says it received Celery task `task_id`."""
        for worker in self.workers:
            if task_id in worker.task_ids():
                return worker
        return None

    def problems(self) -> str:
        """The tail of every log, for a failed wait."""
        logs = [self.daemon.log, *(w.log for w in self.workers)]
        parts = [f"--- {log} ---\n{tail(log)}" for log in logs]
        return "\n".join(parts)


@contextlib.contextmanager
def running_site(
    work: Path,
    database: PostgresServer,
    broker_url: str,
    config: Path,
    *,
    workers: int = 2,
    concurrency: int = 1,
    own_hosts: bool = True,
    sensor_interval: int = 2,
    dequeue_interval_seconds: int | None = None,
    ready_timeout: float = 180,
    **run_monitoring: object,
):
    """Start `workers` Celery workers (hosts mover1, mover2 ... when `own_hosts`) and the
    daemon on `database`, with Redis `broker_url` as broker and result backend and
    `config` as config.yml; yield a Site once every worker is ready; stop them all,
    whatever happens (the daemon first, so that it launches nothing more)."""
    import dagster as dg  # only here: the rest of this module runs without Dagster

    instance_config = scale_out_instance_config(database, work / "shared", dequeue_interval_seconds, **run_monitoring)
    celery_yaml = work / "celery.yaml"
    shutil.copy(SCALE_OUT_ETC / "celery.yaml", celery_yaml)
    env = {
        "ASSYNCY_CONFIG": str(config),
        PASSWORD_ENV: database.password,
        BROKER_ENV: broker_url,
        BACKEND_ENV: broker_url,
    }
    daemon = DagsterDaemon(
        write_dagster_home(work / "dagster-host", instance_config),
        {**env, "ASSYNCY_SENSOR_INTERVAL_SECONDS": str(sensor_interval)},
    )
    movers = [
        CeleryWorker(
            f"assyncy-mover{i}",
            write_dagster_home(work / f"mover{i}", instance_config),
            env,
            celery_yaml,
            concurrency=concurrency,
            host=f"mover{i}" if own_hosts else None,
        )
        for i in range(1, workers + 1)
    ]
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)  # this process opens the same instance to watch
    try:
        # Dagster's PostgreSQL storage creates its tables at first use, and two processes doing it at
        # once on a fresh database collide (DuplicateObject), which the daemon does not retry: this
        # process creates them, before any worker or the daemon starts.
        with dg.DagsterInstance.from_config(str(daemon.home)):
            pass
        for worker in movers:
            worker.start()
        daemon.start()
        deadline = time.monotonic() + ready_timeout
        while not all(w.ready() for w in movers):
            dead = [w for w in movers if not w.alive()]
            if dead or not daemon.alive() or time.monotonic() > deadline:
                what = (
                    f"worker {dead[0].name} exited"
                    if dead
                    else (
                        "the daemon exited" if not daemon.alive() else f"workers not ready within {ready_timeout:.0f} s"
                    )
                )
                raise RuntimeError(f"{what}\n" + Site(daemon, movers, None).problems())
            time.sleep(0.2)
        with dg.DagsterInstance.from_config(str(daemon.home)) as instance:
            yield Site(daemon, movers, instance)
    finally:
        daemon.stop()
        for worker in movers:
            worker.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
