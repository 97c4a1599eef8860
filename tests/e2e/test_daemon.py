"""End to end with the real dagster-daemon: the sensor finds EPNs, queued runs
repatriate them one at a time (max-tasks 1), a failure is e-mailed, and the
unknown EPNs are alerted; then the daemon stops cleanly."""

import itertools
import re
from pathlib import Path

import dagster as dg
import pytest

from assyncy_dagster.names import REPATRIATION_OP
from assyncy_dagster_demo.testing.stack import far_from_the_digest
from tests.support.helpers import dagster_daemon, live_processes_mentioning, wait_for

pytestmark = pytest.mark.slow


def step_windows(instance: dg.DagsterInstance, step_key: str) -> list[tuple[float, float]]:
    windows = []
    for run in instance.get_runs(dg.RunsFilter(job_name="repatriate_epn")):
        records = instance.get_records_for_run(run.run_id).records
        starts = [
            r.event_log_entry.timestamp
            for r in records
            if r.event_log_entry.dagster_event
            and r.event_log_entry.dagster_event.event_type_value == "STEP_START"
            and r.event_log_entry.step_key == step_key
        ]
        ends = [
            r.event_log_entry.timestamp
            for r in records
            if r.event_log_entry.dagster_event
            and r.event_log_entry.dagster_event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE")
            and r.event_log_entry.step_key == step_key
        ]
        if starts and ends:
            windows.append((starts[0], ends[-1]))
    return sorted(windows)


def test_daemon_repatriates_due_epns_alerts_and_stops_cleanly(stack, tmp_path):
    # One EPN per run here, so that several runs compete for the pool of one.
    stack.configure(
        **{
            "max-tasks": 1,
            "max-epns-per-run": 1,
            "dagster-ui-url": "http://127.0.0.1:3000",
            "timezone": far_from_the_digest(),
        }
    )
    stack.lay_out("12282a", "12282b", "13001a", "13001b", "14500a", "14777a")
    unreadable = stack.source / "13001a" / "frames" / "img_0002.cbf"
    unreadable.chmod(0o600)  # root's file: the SFTP account cannot read it, rsync fails (exit 23)

    with dagster_daemon(tmp_path) as (daemon, log):
        wait_for(lambda: set(stack.ignored()) == {"12282a", "12282b"}, 240, "12282a and 12282b", proc=daemon, log=log)

        def subjects() -> list[str]:
            return [m["Subject"] for m in stack.smtp.messages]

        wait_for(
            lambda: "Unknown ownership of EPNs" in subjects() and any("13001a" in s for s in subjects()),
            120,
            "the alert and the failure e-mail",
            proc=daemon,
            log=log,
        )
        assert subjects().count("Unknown ownership of EPNs") == 1, subjects()
        alert = next(m for m in stack.smtp.messages if m["Subject"] == "Unknown ownership of EPNs")
        assert "14500a" in alert.get_body(("plain",)).get_content()
        assert not (stack.destination("ab12", "13001b")).exists(), "running visit must be held back"
        assert "13001a" not in stack.ignored()

        sync_log = Path(stack.settings().log_files.sync).read_text()
        assert re.search(r"requested \d+ run\(s\): repatriate_epn 12282a", sync_log)  # ticks, as mxsync's cycles
        assert re.search(r"EPN 12282a: .* copied to .*; verified", sync_log)  # and the runs' own lines
        assert "demo-password" not in sync_log

        windows = step_windows(stack.instance, REPATRIATION_OP)
        assert len(windows) >= 3
        for (_, end), (start, _) in itertools.pairwise(windows):
            assert start >= end - 0.05, f"rsync pool of 1 let transfers overlap: {windows}"


def test_terminating_a_run_as_the_ui_does_stops_rsync_and_records_nothing(stack, tmp_path):
    stack.configure(**{"rsync-bwlimit-kib": 1024, "timezone": far_from_the_digest()})
    stack.lay_out("12282a", frames=4, size=2 * 1024 * 1024)
    dest = stack.destination("ny79", "12282a")
    with dagster_daemon(tmp_path) as (daemon, log):
        wait_for(
            lambda: live_processes_mentioning(str(dest)), 120, "the sensor's run to start rsync", proc=daemon, log=log
        )
        [run] = stack.instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        assert stack.instance.run_launcher.terminate(run.run_id)  # what the UI's Terminate button calls
        wait_for(lambda: not live_processes_mentioning(str(dest)), 30, "rsync and ssh to end", proc=daemon, log=log)
        wait_for(
            lambda: stack.instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED,
            30,
            "the run to be recorded as canceled",
            proc=daemon,
            log=log,
        )
        assert stack.ignored() == []
        for frame in dest.rglob("*.cbf"):
            if ".rsync-partial" not in frame.parts:  # partial files wait there, never under their final name
                assert frame.read_bytes() == (stack.source / "12282a" / frame.relative_to(dest)).read_bytes()
