"""Shared pieces of the benchmarks that run the real `dagster-daemon` (backlog.py, latency.py).

The daemon runs as production runs it: `dagster-daemon run -m assyncy_dagster.definitions`
in a fresh DAGSTER_HOME holding a copy of `etc/dagster.yaml`, with ASSYNCY_CONFIG
pointing at a generated config.yml, in its own session so that it, its code server
and its run workers are stopped together (SIGTERM to the group, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
from dagster._core.scheduler.instigation import InstigatorType

from assyncy_dagster.etc_files import etc_path
from assyncy_dagster.logs import tail as log_tail  # noqa: F401 (the benchmarks import it from here)
from assyncy_dagster.names import REPATRIATION_JOB
from assyncy_dagster.transfer.process import stop_group
from assyncy_dagster_demo.testing.scale_out import spawn_logged
from assyncy_dagster_demo.testing.stack import far_from_the_digest  # noqa: F401 (the benchmarks import it from here)

# Dagster warns about the beta/preview APIs that it meets; not this benchmark's business.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

BIN = Path(sys.executable).parent
EPN_DATA = dg.AssetKey("epn_data")
PERSON = {"first_names": "Bench", "last_name": "Mark", "email": "bench.mark@example.edu"}


def visit(visit_id: int, epn: str, start: str, end: str) -> dict:
    """One visit in the portal simulator's data format (times may be relative: now-2d, now+40s)."""
    return {
        "id": visit_id,
        "epn": epn,
        "start_time": start,
        "end_time": end,
        "principal_scientist": PERSON,
        "data_scientists": [],
    }


def portal_data(visits_by_equipment: dict[int, list[dict]]) -> dict:
    """Simulator data whose accounts are the ones `write_config` puts in config.yml (DEMO_EQUIPMENT)."""
    from assyncy_dagster_demo.testing.stack import DEMO_EQUIPMENT

    accounts = {e["id"]: e for e in DEMO_EQUIPMENT}
    return {
        "timezone": "UTC",
        "equipment": [
            {**accounts[eid], "name": f"MX{eid}", "visits": visits} for eid, visits in visits_by_equipment.items()
        ],
    }


def fresh_dagster_home(path: Path, dagster_yaml: bool = True) -> Path:
    """A new DAGSTER_HOME with a copy of etc/dagster.yaml, or with none (Dagster's default instance)."""
    path.mkdir(parents=True)
    if dagster_yaml:
        shutil.copy(etc_path("dagster.yaml"), path / "dagster.yaml")
    return path


@contextlib.contextmanager
def dagster_daemon(
    home: Path, config: Path, log: Path, env: dict[str, str] | None = None, drop_env: tuple[str, ...] = ()
) -> Iterator[subprocess.Popen]:
    """The real dagster-daemon on `home` with `config`; stopped with its whole group on exit."""
    environ = {k: v for k, v in os.environ.items() if k not in drop_env}
    environ |= {"DAGSTER_HOME": str(home), "ASSYNCY_CONFIG": str(config)} | (env or {})
    argv = [str(BIN / "dagster-daemon"), "run", "-m", "assyncy_dagster.definitions"]
    proc = spawn_logged(argv, log, environ, home)
    try:
        yield proc
    finally:
        stop_group(proc)


def wait_until(
    predicate: Callable[[], bool], timeout: float, proc: subprocess.Popen | None = None, poll: float = 0.25
) -> float | None:
    """Poll `predicate`; the time.time() when it first held, or None on timeout or when `proc` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.time()
        if proc is not None and proc.poll() is not None:
            print(f"  the daemon exited with status {proc.returncode}")
            return None
        time.sleep(poll)
    return None


# -- reading the instance afterwards ----------------------------------------------------


def sensor_ticks(instance: dg.DagsterInstance, name: str = "epn_sensor") -> list:
    """The sensor's ticks, oldest first (from the instance's schedule storage)."""
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.instigator_name == name:
            return sorted(
                instance.get_ticks(state.instigator_origin_id, state.selector_id), key=lambda tick: tick.timestamp
            )
    return []


def tick_durations(ticks: list) -> list[float]:
    return [t.end_timestamp - t.timestamp for t in ticks if t.end_timestamp]


def repatriation_runs(instance: dg.DagsterInstance) -> list:
    """Run records of the repatriate_epn job, oldest first."""
    records = instance.get_run_records(dg.RunsFilter(job_name=REPATRIATION_JOB))
    return sorted(records, key=lambda r: r.create_timestamp.timestamp())


def run_status_counts(records: list) -> Counter:
    return Counter(r.dagster_run.status.value for r in records)


def failure_lines(instance: dg.DagsterInstance, records: list, limit: int = 5) -> list[str]:
    """The failure messages of failed or canceled runs (and their EPN tags), for the report."""
    lines = []
    for record in records:
        run = record.dagster_run
        if run.status not in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
            continue
        failed = [k.rsplit("/", 1)[-1] for k, v in run.tags.items() if k.startswith("assyncy/epn/") and v == "failed"]
        messages = []
        for rec in instance.get_records_for_run(run.run_id).records:
            entry = rec.event_log_entry
            event = entry.dagster_event
            if (
                event
                and event.event_type_value in ("STEP_FAILURE", "RUN_FAILURE", "ENGINE_EVENT")
                and (event.event_type_value != "ENGINE_EVENT" or "fail" in (entry.message or "").lower())
            ):
                messages.append(" ".join((entry.message or "").split())[:300])
        lines.append(
            f"run {run.run_id} {run.status.value}, EPNs failed: {failed or 'none tagged'}: " + " | ".join(messages[-3:])
        )
        if len(lines) >= limit:
            break
    return lines


def materialisations_per_epn(instance: dg.DagsterInstance, epns: list[str]) -> Counter:
    """How many epn_data materialisations each EPN's partition has."""
    counts: Counter = Counter()
    for epn in epns:
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=EPN_DATA, asset_partitions=[epn]), limit=10
        )
        counts[epn] = len(result.records)
    return counts


def epn_data_times(instance: dg.DagsterInstance, run_id: str) -> list[float]:
    """When each epn_data materialisation of a run was recorded (epoch seconds), in order."""
    times = []
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records:
        event = record.event_log_entry.dagster_event
        if event is not None and event.asset_key == EPN_DATA:
            times.append(record.event_log_entry.timestamp)
    return sorted(times)
