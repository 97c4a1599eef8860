"""The helpers every tier shares, each defined once: waiting and processes, config files,
portal visits and data, e-mail, Dagster results, trees on disk, and the daemon and the UI.

What the package's own stand-ins already provide (`assyncy_dagster_demo.testing`: `ETC`, the
demo accounts, `write_config` for a whole local stand-in, `free_port`, ...) is imported
from there, never copied here.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path
from types import ModuleType
from typing import Any

import dagster as dg
import psutil
import requests
import yaml

from assyncy_dagster.config import Equipment, Settings, load_settings
from assyncy_dagster.cycle import worker_argv
from assyncy_dagster.definitions import build_definitions, build_resources
from assyncy_dagster.domain import Person, Visit, visit_window
from assyncy_dagster.portal.client import PortalClient
from assyncy_dagster.run_records import step_failure_message
from assyncy_dagster.state import IGNORE_KEY
from assyncy_dagster.tick import repatriation_requests
from assyncy_dagster.transfer import SshEndpoint
from assyncy_dagster.transfer.bag import make_manifest
from assyncy_dagster.transfer.process import group_alive
from assyncy_dagster_demo.portal_sim import PortalSimulator, equipment_credentials
from assyncy_dagster_demo.testing.ports import free_port
from assyncy_dagster_demo.testing.processes import processes
from assyncy_dagster_demo.testing.stack import DEMO_EQUIPMENT, ETC, mx_frames

REPO = Path(__file__).resolve().parents[2]  # the checkout, where benchmarks/ lives beside etc/
BIN = Path(sys.executable).parent  # the venv's commands: assyncy, mxsync, dagster, dagster-daemon, ...
EPN_DATA = dg.AssetKey("epn_data")
MATCHES_SOURCE = dg.AssetCheckKey(EPN_DATA, "matches_source")


# -- waiting and processes -------------------------------------------------------------------


def wait_for(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    *,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
) -> None:
    """Poll `predicate` until it is true; fail naming `what` after `timeout` seconds, or as
    soon as `proc` (a server the wait depends on) has exited, with the tail of its `log`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    tail = f"\n--- {log.name} ---\n{log.read_text()[-4000:]}" if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}{tail}")


@contextlib.contextmanager
def running(argv: list[str], **popen_kwargs) -> Iterator[subprocess.Popen]:
    """A command in its own process group, killed with its children if the test leaves it running."""
    proc = subprocess.Popen(argv, start_new_session=True, **popen_kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# Chromium, even driven, looks up its update, account and search-engine hosts in the background:
# every host name but the UI's address resolves to nothing, without a DNS query, and the
# component updater stays off, so the browser touches no network but the loopback.
CHROMIUM_OFFLINE = (
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--disable-component-update",
    "--disable-background-networking",
)


def materialize_argv(epn: str | None = None, select: str = "epn_data") -> list[str]:
    """`dagster asset materialize` of the code location, as a user types it; the partition last."""
    argv = [str(BIN / "dagster"), "asset", "materialize", "-m", "assyncy_dagster.definitions", "--select", select]
    return [*argv, "--partition", epn] if epn else [*argv, "--partition"]


def add_started_run(instance: dg.DagsterInstance, **tags: str) -> str:
    """A repatriation run recorded as started, with `tags`, as a worker's would be: its run id."""
    run_id = str(uuid.uuid4())
    instance.add_run(
        dg.DagsterRun(job_name="repatriate_epn", run_id=run_id, status=dg.DagsterRunStatus.STARTED, tags=tags)
    )
    return run_id


def batch_worker_argv(config_path: Path, epns: Sequence[str], run_id: str | None = None) -> list[str]:
    """A repatriation batch of `epns` in a process of its own, as mxsync starts one: the sensor's own
    run request (tick.repatriation_requests), run by cycle.worker_argv's command line."""
    [request] = repatriation_requests([list(epns)], dry_run=False, history={})
    return worker_argv(config_path, request, run_id or str(uuid.uuid4()))


def command(name: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run `name` (one of the venv's commands: assyncy, mxsync, dagster, ...; or a path) with `args`
    to its end, its output captured as text."""
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True, timeout=timeout)


def transfer_started(destination: Path) -> bool:
    """Whether rsync has written any bytes under `destination` (final or partial files)."""
    return destination.exists() and any(p.is_file() for p in destination.rglob("*"))


def live_processes_mentioning(*texts: str) -> list[str]:
    """`pid: command line` of every live (non-zombie) process but this one whose command line
    contains one of `texts`, e.g. a test's destination or EPN."""
    found = []
    for proc, info in processes("cmdline", "status"):
        line = " ".join(info["cmdline"] or [])
        if proc.pid != os.getpid() and info["status"] != psutil.STATUS_ZOMBIE and any(text in line for text in texts):
            found.append(f"{proc.pid}: {line}")
    return found


def live_processes_of(user: str, under: int | None = None) -> list[str]:
    """`pid: command line` of every live (non-zombie) process of `user` but this one; with `under`,
    only those below that PID (one sshd's sessions, not another test's on the same account)."""
    found = []
    below = None
    if under is not None:
        try:
            below = {child.pid for child in psutil.Process(under).children(recursive=True)}
        except psutil.NoSuchProcess:
            below = set()
    for proc, info in processes("cmdline", "status", "username"):
        if (
            proc.pid != os.getpid()
            and info["status"] != psutil.STATUS_ZOMBIE
            and info["username"] == user
            and (below is None or proc.pid in below)
        ):
            found.append(f"{proc.pid}: {' '.join(info['cmdline'] or [])}")
    return found


def benchmark_module(name: str) -> ModuleType:
    """A script of benchmarks/ as a module (benchmarks/ is scripts, not a package), e.g. the visit generator."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- config files ----------------------------------------------------------------------------


def sample_config(folder: Path, **overrides: object) -> Path:
    """`folder/config.yml`: the shipped etc/config.yml with `overrides` (config.yml's own keys,
    e.g. `**{"smtp-username": "assyncy"}`) applied; returns its path."""
    data = yaml.safe_load((ETC / "config.yml").read_text())
    data.update(overrides)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yml"
    path.write_text(yaml.safe_dump(data))
    return path


# Secrets of every kind config.yml holds, and a portal token: none may ever reach a log file.
PORTAL_PASSWORD = "Portal-Pa55word!"
CLIENT_PASSWORD = "Cl1ent/Secret&more"
SMTP_USER, SMTP_PASSWORD = "assyncy", "smtp-S3cret"
TOKEN = "tok-1234567890abcdef"


def config_with_secrets(folder: Path, log_level: str = "logging.INFO", log_dir: Path | None = None) -> Path:
    """`sample_config` holding a portal password, a client password and an SMTP password,
    at `log_level`, with its log files under `log_dir` (default `folder/var/log`)."""
    log_dir = log_dir or folder / "var" / "log"
    return sample_config(
        folder,
        **{
            "equipment": [
                {
                    "username": "mx@example.edu",
                    "password": PORTAL_PASSWORD,
                    "client_name": "mx-client",
                    "client_password": CLIENT_PASSWORD,
                    "id": 23,
                }
            ],
            "smtp-username": SMTP_USER,
            "smtp-password": SMTP_PASSWORD,
            "smtp-starttls": True,
            "log-level": log_level,
            "log-files": {name: str(log_dir / f"{name}.log") for name in ("sync", "epnalert", "email")},
        },
    )


def log_text(path: Path) -> str:
    """A log file's text; empty before anything was written to it."""
    return path.read_text() if path.exists() else ""


def facility_endpoint(**overrides: object) -> SshEndpoint:
    """An endpoint as config.yml would describe the facility's, with `overrides` applied."""
    values: dict[str, object] = {
        "host": "sftp.synchrotron.org.au",
        "port": 2222,
        "user": "help@massive.org.au",
        "key_file": Path("/etc/assyncy/id_ed25519"),
        "known_hosts_file": Path("/etc/assyncy/known_hosts"),
        "source_root": "/data/mx",
    }
    values.update(overrides)
    return SshEndpoint(**values)  # type: ignore[arg-type]


# -- portal visits and the simulator's data ----------------------------------------------------

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)  # the fixed present of the planning and canary rules
AEDT = timezone(timedelta(hours=11))
START = datetime(2026, 3, 1, 8, 0, tzinfo=AEDT)  # a visit's default start: a fixed, printable time
JANE = Person("Jane", "Doe", "jane.doe@example.edu")
MING = Person("Ming", "Li", "ming.li@example.edu")


def visit_of(
    epn: str,
    principal: Person | None = JANE,
    scientists: Sequence[Person] = (JANE, MING),
    equipment_id: int = 23,
    *,
    start: datetime = START,
    end: datetime | None = None,
) -> Visit:
    """A visit of `epn` as PortalClient hands it on: from `start` to `end` (a day later unless
    given), with its principal and data scientists."""
    return Visit(
        id=1,
        epn=epn,
        start_time=start,
        end_time=end if end is not None else start + timedelta(hours=24),
        principal_scientist=principal,
        data_scientists=tuple(scientists),
        equipment_id=equipment_id,
    )


def last_days(days: int = 30) -> tuple[datetime, datetime]:
    """The window of the last `days` days up to now, as PortalClient.visits takes it."""
    return visit_window(datetime.now(UTC), days)


def person_data(first: str, last: str, email: str | None = None) -> dict[str, str]:
    """A person as the portal (and its simulator's data) gives one; the address is
    first.last@example.edu unless given."""
    return {"first_names": first, "last_name": last, "email": email or f"{first.lower()}.{last.lower()}@example.edu"}


# The `portal_sim` fixture's data: two beamlines with their own accounts, so that a token of
# one cannot read the other.
PORTAL_DATA: dict[str, Any] = {
    "token-ttl-seconds": 3600,
    "equipment": [
        {
            "id": 23,
            "username": "mx1-user@example.edu",
            "password": "mx1-Pa55word",
            "client_name": "mx1-client",
            "client_password": "mx1-Cl1ent-secret",
            "visits": [
                {
                    "id": 1001,
                    "epn": "12282a",
                    "start_time": "now-20d",
                    "end_time": "now-19d",
                    "principal_scientist": person_data("Ada", "Lovelace"),
                    "data_scientists": [person_data("Alan", "Turing"), person_data("Grace", "Hopper")],
                },
                {
                    "id": 1002,
                    "epn": "13001a",
                    "start_time": "now-5d",
                    "end_time": "now-4d",
                    "principal_scientist": person_data("Rosalind", "Franklin"),
                    "data_scientists": [],
                },
            ],
        },
        {
            "id": 24,
            "username": "mx2-user@example.edu",
            "password": "mx2-Pa55word",
            "client_name": "mx2-client",
            "client_password": "mx2-Cl1ent-secret",
            "visits": [
                {
                    "id": 2001,
                    "epn": "12282b",
                    "start_time": "now-10d",
                    "end_time": "now-9d",
                    "principal_scientist": person_data("Ada", "Lovelace"),
                    "data_scientists": [person_data("Alan", "Turing")],
                },
                {
                    "id": 2002,
                    "epn": "13001b",
                    "start_time": "now-1d",
                    "end_time": "now+1d",
                    "principal_scientist": None,
                    "data_scientists": [],
                },
            ],
        },
    ],
}


def portal_data_copy() -> dict[str, Any]:
    """A fresh copy of `PORTAL_DATA`, safe to edit in a test."""
    return copy.deepcopy(PORTAL_DATA)


def portal_secrets(data: dict[str, Any] | None = None) -> list[str]:
    """Every password and client password in simulator data."""
    data = data or PORTAL_DATA
    return [e[k] for e in data["equipment"] for k in ("password", "client_password")]


def equipment_for(data: dict[str, Any] | None = None) -> list[Equipment]:
    """config.yml `equipment` entries matching the accounts in simulator data."""
    return [Equipment(**entry) for entry in equipment_credentials(data or PORTAL_DATA)]


def client_for(sim: PortalSimulator, equipment: list[Equipment] | None = None, **kwargs: Any) -> PortalClient:
    """A client of `sim` with the default accounts and test-speed retries (override with kwargs)."""
    options: dict[str, Any] = {"timeout": 5.0, "retries": 2, "backoff": 0.01}
    options.update(kwargs)
    return PortalClient(sim.url, equipment if equipment is not None else equipment_for(), **options)


def demo_accounts_portal_data(visits: Sequence[tuple[str, str, str]]) -> dict:
    """Simulator data with the demo accounts (those `write_config` puts in config.yml) and
    `visits`, each (epn, start, end), on equipment 23."""
    person = person_data("Ada", "Lovelace", "ada@example.edu")
    equipment = [{**account, "visits": []} for account in DEMO_EQUIPMENT]
    for i, (epn, start, end) in enumerate(visits):
        equipment[0]["visits"].append(
            {
                "id": 70000 + i,
                "epn": epn,
                "start_time": start,
                "end_time": end,
                "principal_scientist": person,
                "data_scientists": [],
            }
        )
    return {"timezone": "UTC", "equipment": equipment}


# -- a local site: where config.yml sends data ---------------------------------------------------


@dataclass
class LocalSite:
    """Where a test's config.yml sends each EPN, and what it has recorded as home (ignore.yml):
    what the `stack` fixture and the scale-out tests' data movers have in common."""

    config_path: Path
    destination_root: Path

    def settings(self) -> Settings:
        return load_settings(self.config_path)

    def destination(self, project: str, epn: str) -> Path:
        return self.destination_root / project / epn / "data"

    def ignored(self) -> list[str]:
        """The EPNs recorded as home, in ignore.yml's order."""
        path = self.settings().ignore
        return (yaml.safe_load(path.read_text()) or {}).get(IGNORE_KEY, []) if path.exists() else []


# -- e-mail ------------------------------------------------------------------------------------

TEXT, HTML = "epnalert-text.j2", "epnalert-html.j2"  # the shipped alert templates in ETC


def alert_on_failed_run(instance: dg.DagsterInstance, run_id: str) -> None:
    """Evaluate repatriation_failure_alert for the failed run `run_id`, as the daemon would
    on the run's failure event: the e-mail goes to the config's SMTP server."""
    from assyncy_dagster.sensors.failure_alerts import repatriation_failure_alert

    [failure] = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    context = dg.build_run_status_sensor_context(
        sensor_name="repatriation_failure_alert",
        dagster_event=failure.event_log_entry.dagster_event,
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(run_id),
        resources=build_resources(),
    ).for_run_failure()
    repatriation_failure_alert(context)


def text_and_html(message: EmailMessage) -> tuple[str, str]:
    """A received message's plain and HTML parts as a mail client shows them (SMTP's CRLF line ends as LF)."""
    text, html = (message.get_body((kind,)).get_content().replace("\r\n", "\n") for kind in ("plain", "html"))
    return text, html


# -- Dagster: the sensor, results and the instance ----------------------------------------------


def sensor_tick(stack, cursor: str | None = None) -> tuple[dg.SensorResult | dg.SkipReason, str | None]:
    """Evaluate epn_sensor once as the daemon does, from `cursor`, and apply its partition
    requests to the stack's instance; returns the result and the cursor for the next tick."""
    defs = build_definitions(str(stack.config_path))
    sensor = defs.get_sensor_def("epn_sensor")
    with dg.build_sensor_context(instance=stack.instance, resources=build_resources(), cursor=cursor) as context:
        result = sensor(context)
        cursor = result.cursor if isinstance(result, dg.SensorResult) else context.cursor
    if isinstance(result, dg.SensorResult):
        for request in result.dynamic_partitions_requests or []:
            stack.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result, cursor


def ticker(stack):
    """Evaluate epn_sensor tick after tick, carrying its cursor as the daemon does;
    returns (next_tick, state) with the cursor in state["cursor"]."""
    state = {"cursor": None}

    def next_tick():
        result, state["cursor"] = sensor_tick(stack, state["cursor"])
        return result

    return next_tick, state


def epn_data_metadata(result: dg.ExecuteInProcessResult) -> dict:
    """The values of epn_data's materialisation metadata in `result`."""
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        if materialization.asset_key == EPN_DATA:
            return {k: v.value for k, v in materialization.metadata.items()}
    raise AssertionError("epn_data was not materialised")


def check_results(result: dg.ExecuteInProcessResult) -> list:
    return [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    """The message an admin is shown for the failed run (the failure e-mail, mxsync's report)."""
    return step_failure_message(result.all_events) or ""


def all_repatriation_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return list(instance.get_runs(dg.RunsFilter(job_name="repatriate_epn")))


def passed_checks(instance: dg.DagsterInstance) -> list[str]:
    """The partitions of every passed `matches_source` check. While a run is on, a record's event
    can still be the check's plan (`AssetCheckEvaluationPlanned`, no verdict yet): not passed."""
    records = instance.event_log_storage.get_asset_check_execution_history(MATCHES_SOURCE, limit=1000)
    return [
        r.evaluation.partition
        for r in records
        if isinstance(r.evaluation, dg.AssetCheckEvaluation) and r.evaluation.passed
    ]


def all_runs_ended(instance: dg.DagsterInstance) -> bool:
    """No run queued or running (stopping the daemon earlier would interrupt a run)."""
    return not instance.get_runs(
        dg.RunsFilter(
            statuses=[
                dg.DagsterRunStatus.QUEUED,
                dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.STARTING,
                dg.DagsterRunStatus.STARTED,
                dg.DagsterRunStatus.CANCELING,
            ]
        )
    )


# -- trees on disk -------------------------------------------------------------------------------


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()} if path.exists() else set()


def visible_files(root: Path) -> dict[str, Path]:
    """Files rsync should bring: relative path -> path, hidden ones left out except `.info`,
    and nothing under `.rsync-partial/`."""
    found = {}
    if not root.exists():
        return found
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        rel = path.relative_to(root)
        if ".rsync-partial" in rel.parts:
            continue
        if any(part.startswith(".") and part != ".info" for part in rel.parts):
            continue
        found[str(rel)] = path
    return found


def tree_differences(source: Path, destination: Path) -> list[str]:
    """What a transfer of `source` has not (yet) brought to `destination`: each visible source
    file (hidden ones excepted, `.info` kept) missing there or with other bytes. A source
    without any such file is a difference too: there is nothing to compare."""
    wanted = visible_files(source)
    if not wanted:
        return [f"{source} holds no file to compare"]
    return [
        rel
        for rel, path in sorted(wanted.items())
        if not (destination / rel).is_file() or (destination / rel).read_bytes() != path.read_bytes()
    ]


def frames_in_folders(folders: int = 8, per_folder: int = 8, size: int = 64 * 1024) -> dict:
    """An EPN of `folders` run folders of `per_folder` frames each (sizes differ), with the
    log, `.info` and the hidden clutter of `mx_frames`: work to share over streams."""
    files = mx_frames(0, 0)
    files.update({f"run_{f}/img_{i:03d}.cbf": size + f * 1024 + i for f in range(folders) for i in range(per_folder)})
    return files


# -- the deployment examples under etc/ ------------------------------------------------------

SCALE_OUT = ETC / "scale-out"
BROKER = "redis://:broker-secret@broker.example.edu:6379/0"  # the examples' Celery broker, from the environment


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# -- systemd units under etc/ ----------------------------------------------------------------

UNITS = sorted([*(ETC / "systemd").glob("*.service"), *(ETC / "scale-out").glob("*.service")])
INSTALL_BIN = "/opt/assyncy/bin/"  # where the units expect the console scripts (`pip install` into /opt/assyncy)


def entries(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Each section's (key, value) pairs in order; systemd allows a key more than once."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not KEY=VALUE"
        current.append((key.strip(), value.strip()))
    return sections


def value(path: Path, section: str, key: str) -> str:
    """The last `key=` of `[section]` in a unit file."""
    found = [v for k, v in entries(path).get(section, []) if k == key]
    assert found, f"{path.name}: [{section}] has no {key}="
    return found[-1]


def exec_start(path: Path) -> list[str]:
    """A unit's ExecStart= as argv."""
    return value(path, "Service", "ExecStart").split()


# -- the daemon and the UI --------------------------------------------------------------------


@contextlib.contextmanager
def dagster_daemon(tmp_path: Path, env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen, Path]]:
    """The real dagster-daemon on this test's instance (DAGSTER_HOME), with the environment
    `env` (default: this one with a 3 s sensor interval); stopped as systemd would (SIGTERM to
    the group), and nothing of it (code server, run workers) may outlive it."""
    log = tmp_path / "daemon.log"
    env = env if env is not None else os.environ | {"ASSYNCY_SENSOR_INTERVAL_SECONDS": "3"}
    argv = [str(BIN / "dagster-daemon"), "run", "-m", "assyncy_dagster.definitions"]
    with open(log, "w") as out, running(argv, stdout=out, stderr=subprocess.STDOUT, env=env) as daemon:
        try:
            yield daemon, log
        finally:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(timeout=60)
    wait_for(lambda: not group_alive(daemon.pid), 30, "the daemon's code server and run workers to exit")


@contextlib.contextmanager
def webserver(tmp_path: Path) -> Iterator[str]:
    """The real dagster-webserver on this test's instance, on a free loopback port; yields
    its GraphQL URL once it answers, and is killed with its process group afterwards."""
    port = free_port()
    log = tmp_path / "webserver.log"
    argv = [str(BIN / "dagster-webserver"), "-m", "assyncy_dagster.definitions", "-h", "127.0.0.1", "-p", str(port)]
    with open(log, "w") as out, running(argv, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ)) as web:

        def answers() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/server_info", timeout=2).ok
            except requests.RequestException:
                return False

        wait_for(answers, 90, "the webserver", proc=web, log=log)
        yield f"http://127.0.0.1:{port}/graphql"


def write_manifest(epn_folder: Path, tree, **choices) -> str:
    """An EPN's manifest made and written at once (bag.make_manifest, then Manifest.write), as a
    verified transfer leaves it: its digest."""
    return make_manifest(epn_folder, tree, **choices).write(epn_folder)
