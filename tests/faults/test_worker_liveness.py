"""A run's worker is ended only on positive evidence, and a dead one is still noticed.

Real transfers of 50 MiB EPNs, slowed to last longer than the heartbeat limit, while the
epn_sensor tick (its sweep of lost runs included) is evaluated every few seconds:

- a `dagster asset materialize` run inside another PID namespace (`unshare --pid --fork
  --mount-proc`: its pid means another process here), and one whose worker tag says
  its start time and namespace could not be read (what a macOS host tags), both run to
  success with 0 ended;
- a run worker in another PID namespace killed outright (the namespace's init SIGKILLed,
  as a container or host dies): only its stopped heartbeat can tell, and the tick ends its
  run within a minute, frees its claim, and a retry brings the EPN home once.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import dagster as dg
import pytest

from assyncy_dagster.claims import HEARTBEAT_LIMIT_SECONDS, HEARTBEAT_SECONDS, WORKER_TAG, claims, heartbeats
from assyncy_dagster.outcomes import Outcome
from assyncy_dagster.partitions import EPN_PARTITIONS_NAME
from assyncy_dagster.run_records import IN_FLIGHT, LOST_TAG
from tests.support.faultkit import figure
from tests.support.helpers import (
    batch_worker_argv,
    live_processes_mentioning,
    materialize_argv,
    running,
    ticker,
    transfer_started,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

EPNS = {"12282a": "ny79", "13001a": "ab12"}  # mapped and ended in the demo portal data
FILES, FILE_SIZE = 5, 10 * 1024 * 1024
# 50 MiB at 1.25 MiB/s: about 40 s, longer than HEARTBEAT_LIMIT_SECONDS, so that only heartbeats keep the runs.
SLOW_KIB = 1280
TICK_EVERY = 3.0
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]


def _can_unshare() -> bool:
    try:
        return subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_unshare = pytest.mark.skipif(not _can_unshare(), reason="unshare --pid needs root (or user namespaces)")


def _epn_data_records(instance: dg.DagsterInstance, epn: str) -> int:
    return len(
        instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("epn_data"), asset_partitions=[epn]), limit=100
        ).records
    )


def _run_carrying(instance: dg.DagsterInstance, epn: str) -> dg.DagsterRun | None:
    """The run whose transfer step has tagged its worker and started `epn`."""
    for run in instance.get_runs(dg.RunsFilter(tags={f"assyncy/epn/{epn}": Outcome.RUNNING.value})):
        if WORKER_TAG in run.tags:
            return run
    return None


@needs_unshare
def test_workers_the_sweep_cannot_look_at_run_to_success_while_the_sensor_ticks(stack, tmp_path):
    stack.configure(**{"rsync-bwlimit-kib": SLOW_KIB, "max-tasks": 2})
    stack.instance.event_log_storage.set_concurrency_slots("rsync", 2)  # both at once
    stack.lay_out(*EPNS, frames=FILES, size=FILE_SIZE)
    stack.instance.add_dynamic_partitions(EPN_PARTITIONS_NAME, list(EPNS))
    env = {**os.environ, "ASSYNCY_QUIET_PREVIEWS": "1"}
    tick, _ = ticker(stack)
    logs = {epn: tmp_path / f"materialize-{epn}.log" for epn in EPNS}
    started = time.monotonic()
    with (
        open(logs["12282a"], "w") as hidden_log,
        open(logs["13001a"], "w") as mac_log,
        running(
            [*UNSHARE, *materialize_argv("12282a")], stdout=hidden_log, stderr=subprocess.STDOUT, env=env
        ) as hidden,
        running(materialize_argv("13001a"), stdout=mac_log, stderr=subprocess.STDOUT, env=env) as mac,
    ):
        wait_for(lambda: _run_carrying(stack.instance, "12282a"), 120, "the namespaced run to start", proc=hidden)
        wait_for(lambda: _run_carrying(stack.instance, "13001a"), 120, "the other run to start", proc=mac)
        hidden_run, mac_run = _run_carrying(stack.instance, "12282a"), _run_carrying(stack.instance, "13001a")
        assert hidden_run is not None and mac_run is not None
        host, pid, *_ = mac_run.tags[WORKER_TAG].split(":")
        # What a worker on macOS tags (no /proc to read its start time or namespace from):
        # written over the real tag while its rsync runs (the step writes no tag until the EPN ends).
        stack.instance.add_run_tags(mac_run.run_id, {WORKER_TAG: f"{host}:{pid}:?:?"})
        hidden_host, hidden_pid, *_ = hidden_run.tags[WORKER_TAG].split(":")
        assert hidden_host == socket.gethostname()  # the same host name: only the namespace tells them apart
        ticks = 0
        while hidden.poll() is None or mac.poll() is None:
            assert time.monotonic() - started < 400, "the slow transfers did not end"
            tick()
            ticks += 1
            time.sleep(TICK_EVERY)
        codes = (hidden.returncode, mac.returncode)
    took = time.monotonic() - started
    runs = {epn: stack.instance.get_run_by_id(run.run_id) for epn, run in (("12282a", hidden_run), ("13001a", mac_run))}
    wrongly_ended = [epn for epn, run in runs.items() if LOST_TAG in run.tags]
    figure(
        f"worker liveness: a run in another PID namespace (tagged pid {hidden_pid}) and one tagged as a macOS "
        f"host ('?' start and namespace) ran {took:.0f} s (heartbeat limit {HEARTBEAT_LIMIT_SECONDS:g} s) "
        f"while the sensor ticked {ticks} times, every {TICK_EVERY:g} s: {len(wrongly_ended)} wrongly ended, "
        f"exit codes {codes}"
    )
    assert wrongly_ended == []
    assert codes == (0, 0), [logs[e].read_text()[-3000:] for e in EPNS]
    assert took > HEARTBEAT_LIMIT_SECONDS, "the transfers must outlast the heartbeat limit to prove anything"
    for epn, run in runs.items():
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags[f"assyncy/epn/{epn}"] == Outcome.HOME.value
        assert _epn_data_records(stack.instance, epn) == 1
    assert sorted(stack.ignored()) == sorted(EPNS)
    assert claims(stack.instance, EPNS) == {}  # every claim given back
    assert heartbeats(stack.instance, [r.run_id for r in runs.values()]) == {}


@needs_unshare
def test_a_worker_killed_where_only_its_heartbeat_tells_is_noticed_within_a_minute(stack, tmp_path, request):
    epn = "12282a"
    stack.configure(**{"rsync-bwlimit-kib": SLOW_KIB})
    stack.lay_out(epn, frames=FILES, size=FILE_SIZE)
    stack.instance.add_dynamic_partitions(EPN_PARTITIONS_NAME, [epn])
    env = {**os.environ, "ASSYNCY_QUIET_PREVIEWS": "1"}
    tick, _ = ticker(stack)
    run_id = str(uuid.uuid4())
    log = tmp_path / "worker.log"
    # Killing the namespace's init kills the worker's watch with it, so nothing is left to remove its
    # shared connection's private folder (a killed container's /tmp goes with it): a temp folder of
    # the test's own, short enough for ssh's socket path, holds it and goes at the end.
    worker_tmp = tempfile.mkdtemp(prefix="assyncy-t-")
    request.addfinalizer(lambda: shutil.rmtree(worker_tmp, ignore_errors=True))
    with (
        open(log, "w") as out,
        running(
            [*UNSHARE, *batch_worker_argv(stack.config_path, [epn], run_id)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, "TMPDIR": worker_tmp},
        ) as worker,
    ):
        wait_for(lambda: transfer_started(stack.destination("ny79", epn)), 120, "rsync to start", proc=worker, log=log)
        assert claims(stack.instance, [epn]) == {epn: run_id}
        assert run_id in heartbeats(stack.instance, [run_id])
        # The namespace's init (the worker) and with it every process inside: a container or host dying.
        os.killpg(worker.pid, signal.SIGKILL)
        killed = time.monotonic()
        worker.wait()
    assert tick() is not None  # at once: its process cannot be looked at, its heartbeat is fresh
    assert stack.instance.get_run_by_id(run_id).status in IN_FLIGHT
    while stack.instance.get_run_by_id(run_id).status in IN_FLIGHT:
        assert time.monotonic() - killed < 90, "the dead worker's run was never ended"
        time.sleep(2.0)
        tick()
    noticed = time.monotonic() - killed
    run = stack.instance.get_run_by_id(run_id)
    figure(
        f"worker liveness: a worker SIGKILLed in another PID namespace was noticed by its stopped heartbeat "
        f"{noticed:.0f} s after the kill (limit {HEARTBEAT_LIMIT_SECONDS:g} s, ticks every 2 s; at most a "
        f"minute with production's 30 s ticks): {run.tags[LOST_TAG]}"
    )
    assert noticed < 60
    assert run.status == dg.DagsterRunStatus.FAILURE and "heartbeat stopped" in run.tags[LOST_TAG]
    assert run.tags[f"assyncy/epn/{epn}"] == Outcome.FAILED.value
    assert claims(stack.instance, [epn]) == {} and heartbeats(stack.instance, [run_id]) == {}
    stack.configure(**{"rsync-bwlimit-kib": None})
    retry = subprocess.run(
        batch_worker_argv(stack.config_path, [epn]),
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    assert retry.returncode == 0, retry.stdout[-3000:] + retry.stderr[-3000:]
    assert _epn_data_records(stack.instance, epn) == 1


def test_a_run_ended_while_its_worker_still_copies_stops_its_rsync_at_its_next_beat(stack, tmp_path):
    """What follows when the sweep judges a worker gone that is only stopped or cut off (its
    heartbeat past the limit) and another run may take its claims: as soon as the worker beats
    again it sees its run ended and stops its rsync, recording nothing. The sweep's ending is
    done here by hand, on a worker that is in fact alive, as the sweep would."""
    epn = "12282a"
    stack.configure(**{"rsync-bwlimit-kib": SLOW_KIB})
    stack.lay_out(epn, frames=FILES, size=FILE_SIZE)
    stack.instance.add_dynamic_partitions(EPN_PARTITIONS_NAME, [epn])
    run_id = str(uuid.uuid4())
    log = tmp_path / "worker.log"
    env = {**os.environ, "ASSYNCY_QUIET_PREVIEWS": "1"}
    with (
        open(log, "w") as out,
        running(
            batch_worker_argv(stack.config_path, [epn], run_id), stdout=out, stderr=subprocess.STDOUT, env=env
        ) as worker,
    ):
        destination = stack.destination("ny79", epn)
        wait_for(lambda: transfer_started(destination), 120, "rsync to start", proc=worker, log=log)
        run = stack.instance.get_run_by_id(run_id)
        stack.instance.add_run_tags(run_id, {LOST_TAG: "judged gone by hand"})
        stack.instance.report_run_failed(run, message="assyncy: run ended as failed: judged gone by hand")
        ended = time.monotonic()
        wait_for(lambda: not live_processes_mentioning(str(destination)), 30, "its rsync to stop", log=log)
        stopped = time.monotonic() - ended
        worker.wait(timeout=120)
    figure(f"worker liveness: a run ended while its worker still copied: its rsync stopped {stopped:.1f} s later")
    assert stopped < HEARTBEAT_SECONDS + 6
    assert "was ended (FAILURE) while its step still ran" in log.read_text()
    assert _epn_data_records(stack.instance, epn) == 0 and stack.ignored() == []
