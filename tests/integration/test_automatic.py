"""The automatic path's rules: batches, when the portal is asked, retries after
outages, and runs whose worker died."""

import logging
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from assyncy_dagster.claims import WORKER_TAG, _pid_namespace, _start_ticks, worker_is_gone
from assyncy_dagster.config import load_settings
from assyncy_dagster.definitions import build_definitions
from assyncy_dagster.facts import SensorCursor, refresh_retry_delay
from assyncy_dagster.names import REPATRIATION_JOB, REPATRIATION_OP, RSYNC_POOL
from assyncy_dagster.outcomes import Outcome
from assyncy_dagster.run_configs import batch_epns, batch_run_config
from assyncy_dagster.run_records import end_lost_runs, epn_history, in_flight, outcome_tags
from tests.support.helpers import ticker


def test_refresh_after_a_failure_waits_1_2_4_minutes_up_to_the_sync_interval(tmp_path, stack):
    settings = stack.settings().model_copy(update={"sync_frequency_hours": 0.1})  # 6 minutes
    assert [refresh_retry_delay(n, settings) for n in (1, 2, 3, 4, 5)] == [60, 120, 240, 360, 360]


def test_between_refreshes_the_sensor_does_not_ask_the_portal(stack):
    stack.lay_out("12282a")
    tick, _ = ticker(stack)
    tick()
    asked = stack.portal.stats()["visits_requests"]
    assert asked > 0
    for _ in range(3):
        tick()
    assert stack.portal.stats()["visits_requests"] == asked


def test_a_failed_refresh_is_retried_after_a_minute_and_says_when(stack):
    stack.lay_out("12282a")
    tick, state = ticker(stack)
    stack.portal.set_faults(down=True)
    first = tick()
    assert isinstance(first, dg.SkipReason)
    assert "portal unavailable" in first.skip_message and "trying again at" in first.skip_message
    cursor = SensorCursor.parse(state["cursor"])
    assert cursor.failures == 1 and 55 <= cursor.retry_at - time.time() <= 61
    stack.portal.set_faults(down=False)
    waiting = tick()
    assert isinstance(waiting, dg.SkipReason) and "next try at" in waiting.skip_message
    # When the minute is up, the next tick refreshes and requests the EPN.
    state["cursor"] = SensorCursor(failures=1, retry_at=time.time() - 1).dumps()
    result = tick()
    assert isinstance(result, dg.SensorResult)
    assert [batch_epns(r.run_config) for r in result.run_requests if r.job_name == REPATRIATION_JOB] == [["12282a"]]
    assert SensorCursor.parse(state["cursor"]).failures == 0


def test_a_visit_that_ends_is_requested_without_asking_the_portal_again(stack):
    stack.lay_out("13001b")  # its demo visit is still running
    tick, _ = ticker(stack)
    tick()
    asked = stack.portal.stats()["visits_requests"]
    from assyncy_dagster import facts as facts_module

    facts = facts_module._facts[str(stack.settings().ignore)]
    for visit in facts.visits:  # as if the clock had moved past the visit's end
        if visit.epn == "13001b":
            object.__setattr__(visit, "end_time", visit.start_time)
    result = tick()
    assert stack.portal.stats()["visits_requests"] == asked
    assert isinstance(result, dg.SensorResult)
    assert [e for r in result.run_requests if r.job_name == REPATRIATION_JOB for e in batch_epns(r.run_config)] == [
        "13001b"
    ]


def test_a_worker_process_is_known_dead_only_when_it_is():
    proc = subprocess.Popen(["sleep", "30"])
    try:
        import socket

        here, namespace = socket.gethostname(), _pid_namespace()
        worker = f"{here}:{proc.pid}:{_start_ticks(proc.pid)}:{namespace}"
        assert not worker_is_gone(worker)
        assert worker_is_gone(f"{here}:{proc.pid}:1:{namespace}")  # same pid, another process
        # Not evidence: another host, another PID namespace, a start time that could not be read
        # (a host without /proc, e.g. macOS), an old tag without its namespace.
        assert not worker_is_gone(f"another-host:{proc.pid}:1:{namespace}")
        assert not worker_is_gone(f"{here}:{proc.pid}:1:4026530000")
        assert not worker_is_gone(f"{here}:{proc.pid}:?:?")
        assert not worker_is_gone(f"{here}:{proc.pid}:1")
    finally:
        proc.kill()
        proc.wait()
    assert worker_is_gone(worker)


def test_a_run_whose_worker_died_is_ended_as_failed_and_frees_its_rsync_slot(stack):
    stack.instance.event_log_storage.set_concurrency_slots("rsync", 1)
    job = build_definitions(str(stack.config_path)).resolve_job_def(REPATRIATION_JOB)
    proc = subprocess.Popen(["true"])
    proc.wait()
    import socket

    dead = f"{socket.gethostname()}:{proc.pid}:0:{_pid_namespace()}"
    run = stack.instance.create_run_for_job(
        job_def=job,
        run_config=batch_run_config(["12282a"]),
        tags={WORKER_TAG: dead, **outcome_tags(["12282a"], Outcome.RUNNING)},
        status=dg.DagsterRunStatus.STARTED,
    )
    stack.instance.event_log_storage.claim_concurrency_slot(RSYNC_POOL, run.run_id, REPATRIATION_OP)
    assert stack.instance.event_log_storage.get_concurrency_info("rsync").active_slot_count == 1

    flights = in_flight(stack.instance, REPATRIATION_JOB, [])
    assert flights.epns == {"12282a": run.run_id}
    ended = end_lost_runs(stack.instance, flights, stale_after_hours=24)
    assert "worker process" in ended[run.run_id]
    assert stack.instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    assert stack.instance.event_log_storage.get_concurrency_info("rsync").active_slot_count == 0
    history = epn_history(stack.instance, "12282a")
    assert history.status is Outcome.FAILED and history.consecutive_failures == 1


def test_settings_take_batch_and_stale_limits(stack):
    stack.configure(**{"max-epns-per-run": 5, "stale-run-hours": 2})
    settings = load_settings(stack.config_path)
    assert (settings.max_epns_per_run, settings.stale_run_hours) == (5, 2)


def test_a_hung_portal_gives_a_skip_reason_within_the_tick_budget(stack, monkeypatch):
    from assyncy_dagster import facts as facts_module

    monkeypatch.setattr(facts_module, "REFRESH_BUDGET_SECONDS", 2)  # 40 s in production, inside Dagster's 60 s
    stack.lay_out("12282a")
    stack.portal.set_faults(delay_seconds=30)
    tick, state = ticker(stack)
    started = time.monotonic()
    result = tick()
    assert time.monotonic() - started < 6
    assert isinstance(result, dg.SkipReason)
    # The portal's own deadline ends a second before the tick gives up on it, naming the equipment.
    assert "equipment 23: could not authenticate" in result.skip_message
    assert "(the time allowed had run out): no answer within 1 s" in result.skip_message
    assert SensorCursor.parse(state["cursor"]).failures == 1
    stack.portal.set_faults(delay_seconds=0)


def test_a_new_code_server_process_does_not_ask_the_portal_again(stack):
    """The daemon replaces its code server about every minute; what the portal said survives it."""
    from assyncy_dagster import facts as facts_module

    stack.lay_out("12282a", "13001b")
    tick, _ = ticker(stack)
    tick()
    asked = stack.portal.stats()["visits_requests"]
    facts_module._facts.clear()  # as in a fresh process
    tick()
    assert stack.portal.stats()["visits_requests"] == asked
    saved = (Path(stack.instance.storage_directory()) / facts_module.FACTS_FILE).read_text()
    assert "12282a" in saved and "@" not in saved, "only EPNs and times are kept, no names or addresses"


def test_a_malformed_visit_is_held_back_by_name_while_the_others_are_requested(stack):
    from assyncy_dagster.domain import visit_window
    from assyncy_dagster.portal.client import PortalClient

    stack.lay_out("12282a", "13001a")
    settings = stack.settings()
    with PortalClient.from_settings(settings) as client:  # equipment 23's answer, as the portal gives it
        visits = [v.to_dict() for v in client.visits(*visit_window(datetime.now(UTC), 30)) if v.equipment_id == 23]
    for visit in visits:
        if visit["epn"] == "13001a":
            visit["end_time"] = None
    stack.portal.set_faults(body_next=1, body={"data": {"visits": visits}}, path="equipment/23/visits")
    tick, state = ticker(stack)
    result = tick()
    assert isinstance(result, dg.SensorResult)
    requested = [e for r in result.run_requests if r.job_name == REPATRIATION_JOB for e in batch_epns(r.run_config)]
    assert requested == ["12282a"]
    # The next tick decides from the same answer, and still names the skipped visit.
    from assyncy_dagster.resources.portal import PortalResource
    from assyncy_dagster.resources.ssh_source import SshSourceResource
    from assyncy_dagster.tick import plan_tick

    cursor = SensorCursor.parse(state["cursor"])
    plan, _ = plan_tick(
        stack.instance, settings, PortalResource(), SshSourceResource(), logging.getLogger("test"), cursor
    )
    assert plan.held_back["13001a"].startswith("the portal sent a malformed visit of it")
    assert "end_time" in plan.held_back["13001a"]


def test_data_written_after_the_sync_is_fetched_within_resync_days(stack):
    stack.configure(**{"resync-days": 30})  # the demo visit of 12282a ended 20 days ago
    stack.lay_out("12282a")
    assert stack.materialize("12282a").success and stack.ignored() == ["12282a"]
    tick, state = ticker(stack)
    first = tick()
    assert not [r for r in getattr(first, "run_requests", []) or [] if r.job_name == REPATRIATION_JOB]

    late = stack.source / "12282a" / "processing" / "autoproc.mtz"  # auto-processing, after the visit
    late.write_bytes(b"m" * 5000)
    state["cursor"] = SensorCursor().dumps()  # the next full refresh (every sync-frequency-hours)
    asked = stack.portal.stats()["visits_requests"]
    result = tick()
    assert stack.portal.stats()["visits_requests"] > asked
    [request] = [r for r in result.run_requests if r.job_name == REPATRIATION_JOB]
    assert batch_epns(request.run_config) == ["12282a"]
    log = (stack.settings().log_files.sync).read_text()
    assert "re-syncing 12282a (source changed since its verified sync" in log and "+1 file(s), +5000 bytes" in log

    job = build_definitions(str(stack.config_path)).resolve_job_def(REPATRIATION_JOB)
    run = job.execute_in_process(instance=stack.instance, run_config=request.run_config, tags=request.tags)
    assert run.success
    assert (stack.destination("ny79", "12282a") / "processing" / "autoproc.mtz").read_bytes() == late.read_bytes()
    [materialization] = [
        e.event_specific_data.materialization
        for e in run.get_asset_materialization_events()
        if e.event_specific_data.materialization.asset_key == dg.AssetKey("epn_data")
    ]
    assert "+1 file(s), +5000 bytes" in materialization.metadata["change"].value

    # Fetched: the next ticks, refresh or not, leave it alone.
    assert not [r for r in getattr(tick(), "run_requests", []) or [] if r.job_name == REPATRIATION_JOB]
    state["cursor"] = SensorCursor().dumps()
    assert not [r for r in getattr(tick(), "run_requests", []) or [] if r.job_name == REPATRIATION_JOB]


def test_past_resync_days_a_recorded_epn_is_not_listed_again(stack):
    stack.configure(**{"resync-days": 7})  # 12282a ended 20 days ago
    stack.lay_out("12282a")
    assert stack.materialize("12282a").success
    (stack.source / "12282a" / "processing" / "autoproc.mtz").write_bytes(b"m" * 5000)
    tick, _ = ticker(stack)
    result = tick()
    assert not [r for r in getattr(result, "run_requests", []) or [] if r.job_name == REPATRIATION_JOB]
