"""`max-tasks: N` counted, not inferred: the SFTP host records when each rsync session starts
and ends (session_log.py around its forced command), and a backlog through the real
dagster-daemon shows N transfers at once, never more; on Dagster's default instance (a
DAGSTER_HOME without dagster.yaml: no pool settings, no run monitoring) and on one with
etc/dagster.yaml. The figure also says how long 1 and 2 transfers ran at once. A run whose
batch is done goes on with the EPNs of the runs still waiting in the queue (each EPN still
transferred once), so the two first runs keep both slots busy instead of idling while the
queue starts the next run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from assyncy_dagster.names import REPATRIATION_JOB
from assyncy_dagster.run_configs import batch_epns
from assyncy_dagster.run_records import tagged_epns
from assyncy_dagster_demo.portal_sim import PortalSimulator
from assyncy_dagster_demo.testing.session_log import Session, most_at_once, seconds_at_once
from assyncy_dagster_demo.testing.sshd import LocalSshd, missing_binaries
from assyncy_dagster_demo.testing.stack import far_from_the_digest, lay_out_epns, mx_frames
from tests.support.faultkit import figure
from tests.support.fixtures.stack import Stack, build_stack
from tests.support.helpers import (
    all_repatriation_runs,
    all_runs_ended,
    dagster_daemon,
    demo_accounts_portal_data,
    tree_differences,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]  # 2 cores shared with the rest of the suite

MAX_TASKS = 2
EPNS = [f"{31001 + i}a" for i in range(8)]
PROJECT = "ny79"
# Three frames of 1 MiB at 1 MiB/s: each EPN's rsync lasts about 3 s, a run of two EPNs
# about 7 s, long enough for two runs to overlap however loaded the machine is when they
# start; 8 EPNs in 4 runs of 2 for 2 slots, so two runs wait their turn.
FRAMES, FRAME_BYTES, BWLIMIT_KIB, PER_RUN = 3, 1024 * 1024, 1024, 2


@pytest.fixture(scope="module")
def recording_sshd() -> Iterator[LocalSshd]:
    """A sshd of this module's own that logs each session's start and end (the session-wide one does not)."""
    missing = missing_binaries()
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    server = LocalSshd(record_sessions=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["default-instance", "etc-dagster-yaml"])
def backlog_stack(request, recording_sshd: LocalSshd, tmp_path: Path, monkeypatch) -> Iterator[Stack]:
    with build_stack(recording_sshd, tmp_path, monkeypatch, dagster_yaml=request.param == "etc-dagster-yaml") as built:
        yield built


def transfers_of(stack: Stack) -> list[Session]:
    """The host's rsync sessions that sent one of this test's EPNs (not listings, not other tests')."""
    folder = f"/data/{stack.beamline}/"
    return [
        s
        for s in stack.sshd.sessions()
        if "--list-only" not in s.command.split() and s.command.split()[-1].startswith(folder)
    ]


def epn_of(session: Session) -> str:
    return session.command.split()[-1].rstrip("/").rsplit("/", 1)[-1]


def run_records(instance: dg.DagsterInstance) -> list[dg.RunRecord]:
    records = instance.get_run_records(dg.RunsFilter(job_name=REPATRIATION_JOB))
    return sorted(records, key=lambda r: r.create_timestamp)


def run_lifetime(record: dg.RunRecord, zero: float) -> str:
    """When a run was queued, started and ended, in seconds from `zero` (an epoch time)."""

    def at(t: float | None) -> str:
        return "   -  " if t is None else f"{t - zero:6.2f}"

    epns = " ".join(batch_epns(record.dagster_run.run_config))
    outcomes = " ".join(f"{epn}:{outcome}" for epn, outcome in sorted(tagged_epns(record.dagster_run.tags).items()))
    return (
        f"  run of {epns} ({outcomes}): queued {at(record.create_timestamp.timestamp())}, "
        f"started {at(record.start_time)}, ended {at(record.end_time)}"
    )


def test_max_tasks_transfers_run_at_once_never_more_counted_on_the_host(backlog_stack, tmp_path, request):
    stack = backlog_stack
    kind = request.node.callspec.params["backlog_stack"]
    assert (Path(stack.instance.root_directory) / "dagster.yaml").exists() == (kind == "etc-dagster-yaml")
    lay_out_epns(stack.sshd, {e: mx_frames(FRAMES, FRAME_BYTES) for e in EPNS}, beamline=stack.beamline)
    visits = [(epn, "now-3d", "now-2d") for epn in EPNS]
    with PortalSimulator(demo_accounts_portal_data(visits)) as portal:
        stack.configure(
            **{
                "base-url": portal.url,
                "epn_cap_map": {epn[:-1]: PROJECT for epn in EPNS},
                "max-tasks": MAX_TASKS,
                "max-epns-per-run": PER_RUN,
                "rsync-bwlimit-kib": BWLIMIT_KIB,
                "timezone": far_from_the_digest(),
            }
        )
        started, started_wall = time.monotonic(), time.time()
        with dagster_daemon(tmp_path) as (daemon, log):
            wait_for(lambda: set(stack.ignored()) == set(EPNS), 240, "every EPN to come home", proc=daemon, log=log)
            # Stopping the daemon earlier would interrupt the last run's bookkeeping.
            wait_for(lambda: all_runs_ended(stack.instance), 90, "the runs to end", proc=daemon, log=log)
    seconds = time.monotonic() - started

    transfers = transfers_of(stack)
    windows = "\n".join(
        f"  {epn_of(s)} {s.start - started:7.2f} -> "
        + ("still running" if s.end is None else f"{s.end - started:7.2f} (exit {s.status})")
        for s in transfers
    )
    runs = all_repatriation_runs(stack.instance)
    lifetimes = "\n".join(run_lifetime(r, started_wall) for r in run_records(stack.instance))
    print(f"transfers on the SFTP host, seconds from the daemon's start ({kind}):\n{windows}\nruns:\n{lifetimes}")
    assert all(s.end is not None and s.status == 0 for s in transfers), f"a transfer did not end well:\n{windows}"
    assert sorted(epn_of(s) for s in transfers) == sorted(EPNS), f"not every EPN was sent once:\n{windows}"
    taken = sum(
        1
        for r in run_records(stack.instance)
        for e, o in tagged_epns(r.dagster_run.tags).items()
        if o == "home" and e not in batch_epns(r.dagster_run.run_config)
    )
    peak = most_at_once(transfers)
    spent = ", ".join(f"{k} for {t:.1f} s" for k, t in seconds_at_once(transfers).items())
    figure(
        f"max-tasks {MAX_TASKS} on {kind}: at most {peak} transfers at once on the SFTP host ({spent}); "
        f"{len(transfers)} transfers of {len(EPNS)} EPNs in {len(runs)} runs ({taken} EPNs taken from runs still "
        f"queued), {seconds:.0f} s from the daemon's start to its stop"
    )
    assert peak <= MAX_TASKS, f"{peak} transfers at once with max-tasks {MAX_TASKS} ({kind}):\n{windows}"
    assert peak == MAX_TASKS, f"the transfers never overlapped ({kind}):\n{windows}"
    # Two slots, four runs of two: the first two runs finish their batches while the others wait.
    assert taken > 0, f"no run took the EPNs of a waiting run ({kind}):\n{lifetimes}"

    assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS] * len(runs)
    for epn in EPNS:
        assert tree_differences(stack.source / epn, stack.destination(PROJECT, epn)) == []
