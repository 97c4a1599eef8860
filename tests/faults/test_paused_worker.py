"""A worker paused mid-transfer past the heartbeat limit, then resumed: never two rsyncs into
one destination, the EPN recorded once, no false failure e-mail (issue 18).

A `dagster asset materialize` run copies a slowed 50 MiB EPN; its whole process group (the
CLI and its step process, as Ctrl-Z or a paused service stops them) gets SIGSTOP. rsync runs
in a session of its own, so the stop does not reach it: the step's watch
(transfer/stepwatch.py) ends it once the step has been stopped for
STOPPED_STEP_LIMIT_SECONDS. The sensor's sweep then ends the run (heartbeat past its limit),
another run takes the EPN over and brings it home, and the paused run, resumed, records
nothing. Every rsync process is sampled every 50 ms throughout.

The paused run is a CLI run, not a Celery worker's: the watch is started by whichever process
runs rsync (a CLI step process or a Celery worker's pool process alike), and the Celery stack
(PostgreSQL, Redis, two workers) would triple the test's time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import dagster as dg
import pytest

from assyncy_dagster.claims import HEARTBEAT_LIMIT_SECONDS, claims
from assyncy_dagster.definitions import build_resources
from assyncy_dagster.outcomes import Outcome
from assyncy_dagster.partitions import EPN_PARTITIONS_NAME
from assyncy_dagster.run_records import IN_FLIGHT, LOST_TAG, tagged_epns
from assyncy_dagster.sensors.failure_alerts import repatriation_failure_alert
from assyncy_dagster.transfer.process import STOPPED_STEP_LIMIT_SECONDS, TERMINATE_GRACE_SECONDS
from tests.faults.test_epn_claims import RsyncSampler
from tests.faults.test_worker_liveness import _epn_data_records, _run_carrying
from tests.support.faultkit import figure
from tests.support.helpers import live_processes_mentioning, materialize_argv, running, ticker, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

EPN, PROJECT = "12282a", "ny79"  # mapped and ended in the demo portal data
# 50 MiB at 640 KiB/s: 80 s, so that without the watch the paused run's rsync would still be
# writing when the other run starts (about 35 s after the stop).
FILES, FILE_SIZE, SLOW_KIB = 5, 10 * 1024 * 1024, 640


def _failure_emails(stack, run_id: str, seen: int = 0) -> tuple[int, int]:
    """Evaluate repatriation_failure_alert on each failure event of run `run_id` after the first
    `seen`, as the daemon does when each is written; returns (events, e-mails the SMTP sink got)."""
    before = len(stack.smtp.messages)
    failures = stack.instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    for failure in failures[seen:]:
        context = dg.build_run_status_sensor_context(
            sensor_name="repatriation_failure_alert",
            dagster_event=failure.event_log_entry.dagster_event,
            dagster_instance=stack.instance,
            dagster_run=stack.instance.get_run_by_id(run_id),
            resources=build_resources(),
        ).for_run_failure()
        repatriation_failure_alert(context)
    return len(failures), len(stack.smtp.messages) - before


def test_a_paused_worker_never_leaves_two_rsyncs_in_one_destination(stack, tmp_path):
    stack.configure(**{"rsync-bwlimit-kib": SLOW_KIB})
    stack.lay_out(EPN, frames=FILES, size=FILE_SIZE)
    stack.instance.add_dynamic_partitions(EPN_PARTITIONS_NAME, [EPN])
    destination = stack.destination(PROJECT, EPN)
    env = {**os.environ, "ASSYNCY_QUIET_PREVIEWS": "1"}
    tick, _ = ticker(stack)
    sampler = RsyncSampler(stack.destination_root)
    sampler.start()
    log = tmp_path / "paused.log"
    try:
        with (
            open(log, "w") as out,
            running(materialize_argv(EPN), stdout=out, stderr=subprocess.STDOUT, env=env) as cli,
        ):
            wait_for(lambda: _run_carrying(stack.instance, EPN), 120, "the run's rsync to start", proc=cli, log=log)
            wait_for(lambda: live_processes_mentioning(str(destination)), 30, "rsync", proc=cli, log=log)
            paused = _run_carrying(stack.instance, EPN)
            os.killpg(cli.pid, signal.SIGSTOP)  # the CLI, its step process and its log tails
            stopped = time.monotonic()
            while live_processes_mentioning(str(destination)):
                assert time.monotonic() - stopped < HEARTBEAT_LIMIT_SECONDS, "the stopped step's rsync ran on"
                time.sleep(0.05)
            rsync_ended = time.monotonic() - stopped
            # The sweep ends the stopped run once its heartbeat is past the limit.
            while stack.instance.get_run_by_id(paused.run_id).status in IN_FLIGHT:
                assert time.monotonic() - stopped < HEARTBEAT_LIMIT_SECONDS + 30, "the stopped run was never ended"
                tick()
                time.sleep(2.0)
            ended = time.monotonic() - stopped
            events, emails = _failure_emails(stack, paused.run_id)  # the sweep's failure, before any retry
            stack.configure(**{"rsync-bwlimit-kib": None})
            retry = subprocess.run(materialize_argv(EPN), capture_output=True, text=True, env=env, timeout=180)
            assert retry.returncode == 0, retry.stdout[-3000:] + retry.stderr[-3000:]
            os.killpg(cli.pid, signal.SIGCONT)
            resumed = time.monotonic()
            cli.wait(timeout=120)
            resumed_for = time.monotonic() - resumed
    finally:
        sampler.stop.set()
        sampler.join()
    paused = stack.instance.get_run_by_id(paused.run_id)
    runs = stack.instance.get_runs(dg.RunsFilter(tags={f"assyncy/epn/{EPN}": Outcome.HOME.value}))
    unsettled = [
        (run.run_id, epn)
        for run in stack.instance.get_runs()
        for epn, outcome in tagged_epns(run.tags).items()
        if outcome in (Outcome.QUEUED.value, Outcome.RUNNING.value)
    ]
    later_events, later_emails = _failure_emails(stack, paused.run_id, seen=events)
    figure(
        f"paused worker: SIGSTOP of a CLI run's process group mid-transfer; its rsync ended "
        f"{rsync_ended:.1f} s later (limit {STOPPED_STEP_LIMIT_SECONDS:g} s + {TERMINATE_GRACE_SECONDS:g} s grace), "
        f"its run ended by the sweep {ended:.0f} s after the stop; another run brought the EPN home; resumed, "
        f"the paused run exited {resumed_for:.1f} s later; {sampler.samples} samples every 50 ms, "
        f"{len(sampler.doubled)} with two rsyncs in one destination; {_epn_data_records(stack.instance, EPN)} "
        f"record(s) of the EPN; failure e-mails for the paused run: {emails} when the sweep ended it, "
        f"{later_emails} for its {later_events - events} later failure event(s)"
    )
    assert sampler.doubled == []
    assert sampler.most[str(destination)] == 1, sampler.most  # both runs' rsyncs were seen, one at a time
    assert rsync_ended < STOPPED_STEP_LIMIT_SECONDS + TERMINATE_GRACE_SECONDS + 2
    assert paused.status == dg.DagsterRunStatus.FAILURE and "heartbeat stopped" in paused.tags[LOST_TAG]
    assert len(runs) == 1 and runs[0].run_id != paused.run_id
    assert _epn_data_records(stack.instance, EPN) == 1 and stack.ignored() == [EPN]
    assert unsettled == []
    assert claims(stack.instance, [EPN]) == {}
    assert "stopped for more than" in log.read_text() or "was ended (FAILURE)" in log.read_text()
    # One e-mail, when the sweep ended the run (its worker stopped past the limit: a real fault of
    # that run); none when its resumed step ended it again.
    assert (emails, later_emails) == (1, 0)
    [message] = stack.smtp.messages
    assert "heartbeat stopped" in message.get_body(("plain",)).get_content()
