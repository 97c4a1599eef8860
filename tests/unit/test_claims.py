"""claims.py: a run's worker is gone only on positive evidence, and each EPN has one claim holder.

On a real Dagster instance on disk (SQLite in a temporary DAGSTER_HOME), whose key-value
table every process of the instance shares; threads stand in for processes here (the
integration and fault tiers race real processes)."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from assyncy_dagster import claims
from assyncy_dagster.assets import repatriation
from assyncy_dagster.claims import (
    HEARTBEAT_LIMIT_SECONDS,
    HEARTBEAT_PREFIX,
    WORKER_TAG,
    Heartbeat,
    claim_epn,
    heartbeats,
    release_epn,
    this_worker,
    why_gone,
    worker_is_gone,
)
from assyncy_dagster.names import REPATRIATION_JOB, REPATRIATION_OP
from assyncy_dagster.outcomes import Outcome
from assyncy_dagster.run_records import outcome_tags, settle_ended_runs, tagged_epns
from tests.support.helpers import add_started_run


@pytest.fixture
def instance(tmp_path: Path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as on_disk:
        yield on_disk


def started_run(instance: dg.DagsterInstance, worker: str | None = None, **tags: str) -> str:
    return add_started_run(instance, **{WORKER_TAG: worker or this_worker(), **tags})


def beat_at(instance: dg.DagsterInstance, run_id: str, stamp: float) -> None:
    instance.run_storage.set_cursor_values({HEARTBEAT_PREFIX + run_id: f"{stamp:.3f}"})


def free_pid() -> int:
    """A pid no process can have: above the kernel's pid_max."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


# -- death only on positive evidence -----------------------------------------------------


def test_this_process_is_tagged_with_its_host_pid_start_and_pid_namespace():
    host, pid, start, namespace = this_worker().split(":")
    assert (host, int(pid)) == (socket.gethostname(), os.getpid())
    assert start.isdigit() and namespace.isdigit()
    assert not worker_is_gone(this_worker())


def test_a_free_pid_in_this_namespace_is_evidence_of_death():
    here = this_worker().split(":")
    assert worker_is_gone(f"{here[0]}:{free_pid()}:{here[2]}:{here[3]}")
    assert worker_is_gone(f"{here[0]}:{os.getpid()}:1:{here[3]}")  # the pid now names another process


@pytest.mark.parametrize(
    "why, tag",
    [
        ("another host", "mover2:{pid}:1:{ns}"),
        ("another PID namespace (a container, unshare --pid)", "{host}:{pid}:1:4026530000"),
        ("a host without /proc (macOS): start time unknown", "{host}:{pid}:?:?"),
        ("start time unknown, namespace known", "{host}:{pid}:?:{ns}"),
        ("an old tag without its namespace", "{host}:{pid}:1"),
        ("not a tag at all", "garbage"),
    ],
)
def test_what_cannot_be_looked_at_is_never_death(why, tag):
    host, _, _, ns = this_worker().split(":")
    assert not worker_is_gone(tag.format(host=host, pid=free_pid(), ns=ns)), why


def test_an_unreadable_proc_is_not_death(monkeypatch):
    """/proc/<pid>/stat unreadable (hidepid, a locked-down container): faked, as it cannot be
    produced for root on this machine."""

    def unreadable(*args, **kwargs):
        raise PermissionError("hidepid")

    host, _, start, ns = this_worker().split(":")
    monkeypatch.setattr("builtins.open", unreadable)
    assert not worker_is_gone(f"{host}:{free_pid()}:{start}:{ns}")


def test_a_stopped_heartbeat_is_death_and_a_fresh_one_is_not(instance):
    unknowable = "mac.local:123:?:?"
    run_id = started_run(instance, unknowable)
    run = instance.get_run_by_id(run_id)
    now = time.time()
    assert why_gone(run, None, now) is None  # no heartbeat (yet, or any more): no evidence
    assert why_gone(run, now - HEARTBEAT_LIMIT_SECONDS + 1, now) is None
    why = why_gone(run, now - HEARTBEAT_LIMIT_SECONDS - 1, now)
    assert why is not None and "heartbeat stopped" in why
    ended = run.with_status(dg.DagsterRunStatus.SUCCESS)
    assert why_gone(ended, now - 3600, now) is None  # only started runs are judged


def test_the_heartbeat_is_written_while_the_step_runs_and_removed_after(instance, monkeypatch):
    monkeypatch.setattr(claims, "HEARTBEAT_SECONDS", 0.05)
    run_id = started_run(instance)
    with Heartbeat(instance, run_id):
        first = heartbeats(instance, [run_id])[run_id]
        time.sleep(0.3)
        assert heartbeats(instance, [run_id])[run_id] > first
    assert heartbeats(instance, [run_id]) == {}


# -- one claim per EPN -------------------------------------------------------------------


def test_an_epn_has_one_claim_holder_until_it_is_given_back(instance):
    a, b = started_run(instance), started_run(instance)
    assert claim_epn(instance, "12282a", a) is None
    assert claim_epn(instance, "12282a", a) is None  # already its own
    assert claim_epn(instance, "12282a", b) == a
    release_epn(instance, "12282a", b)  # not its claim: nothing happens
    assert claim_epn(instance, "12282a", b) == a
    release_epn(instance, "12282a", a)
    assert claim_epn(instance, "12282a", b) is None


def test_many_runs_asking_at_once_get_one_claim(instance):
    runs = [started_run(instance) for _ in range(8)]
    for round_ in range(10):
        epn = f"12282{'abcdefghij'[round_]}"
        barrier = threading.Barrier(len(runs))
        got: list[str] = []

        def ask(run_id: str, epn: str = epn, barrier: threading.Barrier = barrier, got: list = got) -> None:
            barrier.wait()
            if claim_epn(instance, epn, run_id) is None:
                got.append(run_id)

        threads = [threading.Thread(target=ask, args=(r,)) for r in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(got) == 1, (epn, got)


def test_a_claim_expires_when_its_run_ended_or_its_heartbeat_stopped(instance):
    ended, stalled, alive, taker = (started_run(instance, "mac.local:1:?:?") for _ in range(4))
    for epn, holder in (("12282a", ended), ("12282b", stalled), ("12282c", alive)):
        assert claim_epn(instance, epn, holder) is None
    instance.report_run_failed(instance.get_run_by_id(ended))
    beat_at(instance, stalled, time.time() - HEARTBEAT_LIMIT_SECONDS - 5)
    beat_at(instance, alive, time.time())
    assert claim_epn(instance, "12282a", taker) is None
    assert claim_epn(instance, "12282b", taker) is None
    assert claim_epn(instance, "12282c", taker) == alive


def test_a_run_ended_from_outside_keeps_its_claim_while_its_step_still_beats(instance):
    """The sweep ends a run whose Celery worker stopped answering, but a worker that is only paused
    or cut off may still be writing: the EPN is not taken over until its heartbeat stops."""
    paused, taker = (started_run(instance, "celery-host:1:?:?") for _ in range(2))
    assert claim_epn(instance, "12282a", paused) is None
    beat_at(instance, paused, time.time() - 12)  # past the ping rule's quiet time, inside the limit
    instance.report_run_failed(instance.get_run_by_id(paused))
    assert claim_epn(instance, "12282a", taker) == paused
    beat_at(instance, paused, time.time() - HEARTBEAT_LIMIT_SECONDS - 1)
    assert claim_epn(instance, "12282a", taker) is None


# -- nothing stays in flight after its run ------------------------------------------------


def test_the_sweep_fails_the_epns_an_ended_run_left_queued_or_running(instance):
    run_id = started_run(
        instance, **outcome_tags(["12282a"], Outcome.HOME), **outcome_tags(["12282b"], Outcome.RUNNING)
    )
    instance.add_run_tags(run_id, outcome_tags(["13001a"], Outcome.QUEUED))
    assert settle_ended_runs(instance) == {}  # still in flight: not the sweep's business
    instance.report_run_failed(instance.get_run_by_id(run_id))
    assert settle_ended_runs(instance) == {run_id: ["12282b", "13001a"]}
    assert tagged_epns(instance.get_run_by_id(run_id).tags) == {
        "12282a": "home",
        "12282b": "failed",
        "13001a": "failed",
    }
    assert settle_ended_runs(instance) == {}


def test_a_claim_that_keeps_changing_hands_is_never_taken_for_free(instance, monkeypatch):
    """Another run taking and giving back the claim between each of this run's looks, five
    times over: faked (the interleaving cannot be forced with real processes), as the answer
    must still be 'held', never 'yours'."""
    monkeypatch.setattr(claims, "_insert", lambda storage, key, value: False)
    monkeypatch.setattr(type(instance.run_storage), "get_cursor_values", lambda self, keys: {})
    assert claim_epn(instance, "12282a", started_run(instance)) is not None


# -- an EPN of a waiting batch: taken by another run or kept by its own, never both ------------


def waiting_batch(instance: dg.DagsterInstance, epns: list[str]) -> str:
    """A batch run not started yet (as mxsync's workers make them; the daemon's queue holds them
    `queued`), its EPNs tagged `queued` as the sensor requests them."""
    run_id = str(uuid.uuid4())
    config = {"ops": {REPATRIATION_OP: {"config": {"epns": epns}}}}
    instance.add_run(
        dg.DagsterRun(
            job_name=REPATRIATION_JOB,
            run_id=run_id,
            status=dg.DagsterRunStatus.NOT_STARTED,
            run_config=config,
            tags=outcome_tags(epns, Outcome.QUEUED),
        )
    )
    return run_id


def test_an_epn_taken_before_its_batch_begins_is_left_out_by_it(instance):
    batch, taker = waiting_batch(instance, ["12282a", "12282b"]), started_run(instance)
    assert repatriation._took_from(instance, batch, "12282b", taker)
    assert repatriation._begin(instance, batch, ["12282a", "12282b"], batch=True) == ["12282b"]
    assert tagged_epns(instance.get_run_by_id(batch).tags) == {"12282a": "queued", "12282b": "skipped"}
    assert not repatriation._took_from(instance, batch, "12282a", taker)  # its step has begun


def test_an_epn_asked_for_while_its_batch_begins_stays_with_the_batch(instance, monkeypatch):
    """The batch run is held between reading which of its EPNs were taken and tagging the rest
    `queued` (an event in its tag write: the interleaving cannot be forced otherwise) while
    another run asks for one of them. Without the batch's claim both would bring it home."""
    batch, taker = waiting_batch(instance, ["12282a", "12282b"]), started_run(instance)
    monkeypatch.setattr(repatriation, "TAKE_WAIT_SECONDS", 0.3)
    reading_done, go_on = threading.Event(), threading.Event()
    add_run_tags = instance.add_run_tags

    def held_tag_write(run_id: str, tags) -> None:
        if run_id == batch and WORKER_TAG in tags:
            reading_done.set()
            go_on.wait(10)
        add_run_tags(run_id, tags)

    monkeypatch.setattr(instance, "add_run_tags", held_tag_write)
    taken: list[list[str]] = []
    beginning = threading.Thread(
        target=lambda: taken.append(repatriation._begin(instance, batch, ["12282a", "12282b"], batch=True))
    )
    beginning.start()
    assert reading_done.wait(10)
    took = repatriation._took_from(instance, batch, "12282b", taker)
    go_on.set()
    beginning.join(10)
    assert (took, taken) == (False, [[]])
    assert tagged_epns(instance.get_run_by_id(batch).tags) == {"12282a": "queued", "12282b": "queued"}
