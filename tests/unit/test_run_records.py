"""run_records.celery_workers_gone: how epn_sensor tells that a run's Celery worker on
another host is gone (tests/e2e/test_scale_out.py does it for real with a SIGKILLed worker)."""

from __future__ import annotations

import socket
import time
import uuid
from types import SimpleNamespace

import dagster as dg
import pytest

from assyncy_dagster.claims import HEARTBEAT_QUIET_SECONDS
from assyncy_dagster.run_records import CELERY_TASK_TAG, SILENT_TAG, WORKER_TAG, celery_workers_gone
from tests.support.helpers import add_started_run

NODE = "assyncy-mover1@mover1"


class FakeCelery:
    """What celery_workers_gone asks of a Celery app: task states and pings."""

    def __init__(self, states: dict[str, tuple[str, object]], answering: set[str], broken: bool = False):
        self.states = states
        self.answering = answering
        self.broken = broken
        self.pings = 0
        self.control = self

    def AsyncResult(self, task_id: str):  # Celery's name
        if self.broken:
            raise ConnectionError("broker unreachable")
        state, info = self.states.get(task_id, ("PENDING", None))
        return SimpleNamespace(state=state, info=info, result=info)

    def ping(self, destination, timeout, limit):
        self.pings += 1
        return [{node: {"ok": "pong"}} for node in destination if node in self.answering]


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


def started_run(instance: dg.DagsterInstance, task_id: str, worker: str = "mover1:4242:99", **tags: str) -> str:
    return add_started_run(instance, **{CELERY_TASK_TAG: task_id, WORKER_TAG: worker, **tags})


def records(instance: dg.DagsterInstance) -> list[dg.RunRecord]:
    return list(instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])))


def test_a_worker_that_stops_answering_is_gone_at_the_second_check_only(instance):
    run_id = started_run(instance, "task-1")
    app = FakeCelery({"task-1": ("STARTED", {"hostname": NODE, "pid": 4242})}, answering=set())

    assert celery_workers_gone(instance, records(instance), app=app) == {}
    assert instance.get_run_by_id(run_id).tags[SILENT_TAG]  # remembered for the next check
    gone = celery_workers_gone(instance, records(instance), app=app)
    assert list(gone) == [run_id]
    assert NODE in gone[run_id] and "has not answered" in gone[run_id]


def test_a_worker_that_answers_again_is_forgiven(instance):
    run_id = started_run(instance, "task-1")
    app = FakeCelery({"task-1": ("STARTED", {"hostname": NODE, "pid": 4242})}, answering=set())
    celery_workers_gone(instance, records(instance), app=app)

    app.answering = {NODE}
    assert celery_workers_gone(instance, records(instance), app=app) == {}
    assert instance.get_run_by_id(run_id).tags[SILENT_TAG] == ""
    app.answering = set()
    assert celery_workers_gone(instance, records(instance), app=app) == {}  # a first silence again


def test_a_failed_celery_task_means_the_run_process_died(instance):
    run_id = started_run(instance, "task-1")
    app = FakeCelery(
        {"task-1": ("FAILURE", RuntimeError("Worker exited prematurely: signal 9 (SIGKILL)"))}, answering={NODE}
    )
    gone = celery_workers_gone(instance, records(instance), app=app)
    assert "signal 9" in gone[run_id]


def test_what_celery_cannot_tell_ends_nothing(instance):
    # A task not yet STARTED (PENDING: with an rpc:// backend, always) and a run on this host
    # (its worker pid is checked directly) are not pinged; an unreachable broker ends nothing.
    started_run(instance, "task-pending")
    started_run(instance, "task-here", worker=f"{socket.gethostname()}:1:1")
    app = FakeCelery({"task-here": ("STARTED", {"hostname": NODE})}, answering=set())
    for _ in range(2):
        assert celery_workers_gone(instance, records(instance), app=app) == {}
    assert app.pings == 0
    broken = FakeCelery({}, answering=set(), broken=True)
    assert celery_workers_gone(instance, records(instance), app=broken) == {}


def test_without_a_celery_launcher_nothing_is_asked(instance):
    started_run(instance, "task-1")
    assert celery_workers_gone(instance, records(instance)) == {}  # the default run launcher has no Celery app


def test_a_worker_cut_off_from_the_broker_but_still_beating_keeps_its_run(instance, caplog):
    """Two missed pings are not enough while the run's transfer step still writes its heartbeat
    to the database; with the heartbeat quiet too, the run is gone."""
    beating, quiet = started_run(instance, "task-1"), started_run(instance, "task-2")
    app = FakeCelery({t: ("STARTED", {"hostname": NODE}) for t in ("task-1", "task-2")}, answering=set())
    now = time.time()
    beats = {beating: now - 2, quiet: now - HEARTBEAT_QUIET_SECONDS - 5}
    assert celery_workers_gone(instance, records(instance), app=app, beats=beats) == {}
    gone = celery_workers_gone(instance, records(instance), app=app, beats=beats)
    assert list(gone) == [quiet] and "heartbeat stopped" in gone[quiet]
    assert "cut off from the broker, still working; not ended" in caplog.text


def test_a_broker_that_cannot_be_asked_is_said_in_the_log(instance, caplog):
    started_run(instance, "task-1")
    assert celery_workers_gone(instance, records(instance), app=FakeCelery({}, answering=set(), broken=True)) == {}
    assert "cannot ask Celery" in caplog.text and "broker unreachable" in caplog.text


def test_a_run_ended_on_a_silent_celery_worker_keeps_its_claims_until_its_heartbeat_stops(tmp_path, monkeypatch):
    """The sweep fails the run (its EPNs are retried elsewhere), but its worker may be only paused
    with an rsync writing: the EPN's claim is not freed, so no other run starts a second rsync
    into it until the paused step's heartbeat stops (claims.claim_holder_gone). The silent worker
    is a fault the unit tier cannot make: celery_workers_gone's verdict is given here."""
    import time

    from assyncy_dagster import run_records
    from assyncy_dagster.claims import HEARTBEAT_PREFIX, claim_epn
    from assyncy_dagster.outcomes import Outcome
    from assyncy_dagster.run_records import InFlight, end_lost_runs, outcome_tags

    with dg.instance_for_test(temp_dir=str(tmp_path)) as on_disk:
        paused = started_run(on_disk, "task-1", **outcome_tags(["12282a"], Outcome.RUNNING))
        assert claim_epn(on_disk, "12282a", paused) is None
        on_disk.run_storage.set_cursor_values({HEARTBEAT_PREFIX + paused: f"{time.time() - 12:.3f}"})
        monkeypatch.setattr(
            run_records, "celery_workers_gone", lambda *args, **kwargs: {paused: "its Celery worker has not answered"}
        )
        flights = InFlight({"12282a": paused}, records(on_disk))

        assert list(end_lost_runs(on_disk, flights, stale_after_hours=24)) == [paused]
        assert on_disk.get_run_by_id(paused).status == dg.DagsterRunStatus.FAILURE
        assert claim_epn(on_disk, "12282a", str(uuid.uuid4())) == paused  # still held: it may still be writing
