"""End to end, automatic operation with the real dagster-daemon: a big backlog goes
home in few runs, a visit that ends is acted on without waiting for the next portal
refresh, portal outages and garbage are retried, a killed run worker is recovered
from, and a run started from the UI path never races the sensor's own run.

Every test starts the real `dagster-daemon` on the `stack` fixture's instance.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest

from assyncy_dagster.names import INTERVAL_ENV
from assyncy_dagster_demo.portal_sim import PortalSimulator
from assyncy_dagster_demo.testing.scale_out import ConcurrencyWatch
from assyncy_dagster_demo.testing.stack import far_from_the_digest
from tests.support.helpers import (
    EPN_DATA,
    all_repatriation_runs,
    all_runs_ended,
    dagster_daemon,
    demo_accounts_portal_data,
    live_processes_mentioning,
    log_text,
    materialize_argv,
    passed_checks,
    running,
    transfer_started,
    tree_differences,
    wait_for,
)

pytestmark = pytest.mark.slow


# -- helpers ------------------------------------------------------------------------


def materialised_partitions(instance: dg.DagsterInstance) -> list[str]:
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=EPN_DATA), limit=1000).records
    return [r.asset_materialization.partition for r in records]


def runs_carrying(instance: dg.DagsterInstance, epn: str) -> list[dg.DagsterRun]:
    """Every run (sensor batch, UI, CLI) that carries `epn`: by its EPN tag or its partition."""
    return [
        run
        for run in instance.get_runs()
        if f"assyncy/epn/{epn}" in run.tags or run.tags.get("dagster/partition") == epn
    ]


def transfer_windows(
    instance: dg.DagsterInstance, runs: list[dg.DagsterRun], epn: str
) -> list[tuple[float, float, str]]:
    """(start, end, run id) of the step of each run that brought `epn` home (its tag says `home`);
    a run that refused the EPN never ran rsync for it (ConcurrencyWatch sees every rsync)."""
    windows = []
    for run in runs:
        if run.tags.get(f"assyncy/epn/{epn}") != "home":
            continue
        records = [r.event_log_entry for r in instance.get_records_for_run(run.run_id, limit=5000).records]
        steps = [
            e
            for e in records
            if e.dagster_event and e.dagster_event.event_type_value in ("STEP_START", "STEP_SUCCESS", "STEP_FAILURE")
        ]
        starts = [e.timestamp for e in steps if e.dagster_event.event_type_value == "STEP_START"]
        ends = [e.timestamp for e in steps if e.dagster_event.event_type_value != "STEP_START"]
        windows.append((min(starts), max(ends) if ends else float("inf"), run.run_id))
    return sorted(windows)


# -- (a) a backlog ----------------------------------------------------------------------


def test_a_backlog_of_fifty_two_epns_goes_home_in_a_few_batch_runs(stack, tmp_path):
    bases = [str(31000 + i) for i in range(13)]
    epns = [f"{base}{letter}" for base in bases for letter in "abcd"]
    visits = [(epn, f"now-{3 + i % 5}d", f"now-{2 + i % 5}d") for i, epn in enumerate(epns)]
    with PortalSimulator(demo_accounts_portal_data(visits)) as portal:
        stack.configure(
            **{"base-url": portal.url, "epn_cap_map": {b: f"p{b}" for b in bases}, "timezone": far_from_the_digest()}
        )
        stack.lay_out(*epns, frames=1, size=2048)
        with dagster_daemon(tmp_path) as (daemon, log):
            wait_for(
                lambda: set(stack.ignored()) >= set(epns),
                300,
                f"all {len(epns)} EPNs in ignore.yml",
                proc=daemon,
                log=log,
            )
            wait_for(
                lambda: all(
                    r.status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE)
                    for r in all_repatriation_runs(stack.instance)
                ),
                60,
                "the runs to end",
                proc=daemon,
                log=log,
            )

    instance = stack.instance
    assert sorted(stack.ignored()) == sorted(epns)
    materialised = materialised_partitions(instance)
    assert sorted(materialised) == sorted(epns), "each EPN needs exactly one epn_data materialisation of its own"
    checked = passed_checks(instance)
    assert sorted(checked) == sorted(epns), "each EPN needs exactly one passed matches_source of its own"
    runs = all_repatriation_runs(instance)
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), [(r.run_id, r.status) for r in runs]
    assert 1 <= len(runs) <= len(epns) // 10, f"{len(runs)} runs for {len(epns)} EPNs"
    for epn in (epns[0], epns[-1]):
        assert not tree_differences(stack.source / epn, stack.destination(f"p{epn[:5]}", epn))


# -- (b) a visit that ends while the daemon runs --------------------------------------


def test_b_a_visit_ending_after_start_is_home_within_two_minutes_without_a_refresh(stack, tmp_path):
    """sync-frequency-hours 1 and the production 30 s tick (no ASSYNCY_SENSOR_INTERVAL_SECONDS):
    the portal is asked once at start, and the end of the visit is acted on from what it said then."""
    epn = "12282c"
    with PortalSimulator(demo_accounts_portal_data([(epn, "now-2h", "now+40s")])) as portal:
        ends_at = portal.now.timestamp() + 40
        stack.configure(**{"base-url": portal.url, "sync-frequency-hours": 1, "timezone": far_from_the_digest()})
        stack.lay_out(epn, frames=1, size=2048)
        sync_log = Path(stack.settings().log_files.sync)

        # The sensor's production tick: no ASSYNCY_SENSOR_INTERVAL_SECONDS in the daemon's environment.
        production = {k: v for k, v in os.environ.items() if k != INTERVAL_ENV}
        with dagster_daemon(tmp_path, env=production) as (daemon, log):
            # The tick's summary goes to the daemon's log (sensor log) and, on a skip, to the sync log.
            held_back = f"held back: {epn}"
            wait_for(
                lambda: held_back in log_text(sync_log) + log.read_text(),
                max(1.0, ends_at - time.time()),
                f"the sensor's first tick to hold {epn} back while its visit runs",
                proc=daemon,
                log=log,
            )
            assert time.time() < ends_at

            asked: list[int] = []

            def requested() -> bool:
                if runs_carrying(stack.instance, epn):
                    asked.append(portal.stats()["visits_requests"])
                    return True
                return False

            wait_for(
                requested, ends_at + 120 - time.time(), f"a run for {epn} after its visit ended", proc=daemon, log=log
            )
            # One refresh at start (a visits request per equipment), none since: no refresh trick.
            assert asked[0] == 2, f"portal visits requests before the run: {asked[0]}"
            wait_for(
                lambda: epn in stack.ignored() and epn in passed_checks(stack.instance),
                ends_at + 120 - time.time(),
                f"{epn} verified home within 2 minutes of the visit's end",
                proc=daemon,
                log=log,
            )
            home_after = time.time() - ends_at
            wait_for(lambda: all_runs_ended(stack.instance), 60, "the run to end", proc=daemon, log=log)

    assert stack.ignored() == [epn]
    assert not tree_differences(stack.source / epn, stack.destination("ny79", epn))
    [run] = runs_carrying(stack.instance, epn)
    assert run.tags[f"assyncy/epn/{epn}"] == "home"
    print(f"{epn} home {home_after:.1f} s after its visit ended")


# -- (c) portal errors and garbage -----------------------------------------------------


def test_c_portal_500s_then_garbage_still_bring_due_epns_home_within_four_minutes(stack, tmp_path):
    stack.configure(**{"sync-frequency-hours": 24, "timezone": far_from_the_digest()})
    due = ["12282a", "12282b", "13001a"]
    stack.lay_out(*due, "13001b", frames=1, size=2048)
    stack.portal.set_faults(fail_next=2, status=500, malformed_next=1, path="visits")
    started = time.monotonic()
    with dagster_daemon(tmp_path) as (daemon, log):
        wait_for(
            lambda: set(stack.ignored()) >= set(due), 240, "all due EPNs home within 4 minutes", proc=daemon, log=log
        )
        took = time.monotonic() - started
        wait_for(lambda: all_runs_ended(stack.instance), 60, "the runs to end", proc=daemon, log=log)
        assert stack.portal.stats()["faults_injected"] == 3
        faults = stack.portal.faults()
        assert faults["fail_next"] == 0 and faults["malformed_next"] == 0

    assert sorted(stack.ignored()) == due
    assert sorted(passed_checks(stack.instance)) == due
    assert not stack.destination("ab12", "13001b").exists(), "the running visit must be held back"
    sync_log = Path(stack.settings().log_files.sync).read_text()
    assert "portal unavailable" in sync_log, "the failed refresh should be in the sync log"
    print(f"due EPNs home {took:.1f} s after the daemon started")


# -- (d) a run worker killed outright ---------------------------------------------------


def test_d_a_sigkilled_run_worker_is_recovered_from(stack, tmp_path):
    victim, others = "12282a", ["12282b", "13001a"]
    stack.configure(
        **{
            "max-tasks": 1,
            "max-epns-per-run": 1,
            "retry-backoff-minutes": 0.05,
            "rsync-bwlimit-kib": 256,
            "timezone": far_from_the_digest(),
        }
    )
    stack.lay_out(victim, frames=2, size=1024 * 1024)  # about 8 s at 256 KiB/s
    stack.lay_out(*others, frames=1, size=2048)
    dest = stack.destination("ny79", victim)
    instance = stack.instance

    with dagster_daemon(tmp_path) as (daemon, log):
        wait_for(
            lambda: transfer_started(dest) and live_processes_mentioning(str(dest)),
            180,
            f"rsync to be writing {victim}",
            proc=daemon,
            log=log,
        )
        [run] = [
            r
            for r in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
            if r.tags.get(f"assyncy/epn/{victim}") == "running"
        ]
        _host, pid, *_ = run.tags["assyncy/worker"].split(":")  # host:pid:start:pid-namespace
        worker = psutil.Process(int(pid))
        victims = list(worker.children(recursive=True))
        assert any(p.name() == "rsync" for p in victims), [p.cmdline() for p in victims]
        os.kill(int(pid), signal.SIGKILL)

        def leftovers() -> list[str]:
            alive = []
            for p in victims:
                try:
                    if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                        alive.append(" ".join(p.cmdline()))
                except psutil.Error:
                    pass
            return alive

        wait_for(lambda: not leftovers(), 20, "the killed worker's rsync and ssh to end", proc=daemon, log=log)
        wait_for(
            lambda: instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE,
            60,
            "the killed run to be ended as FAILURE",
            proc=daemon,
            log=log,
        )
        wait_for(
            lambda: set(stack.ignored()) >= {victim, *others},
            180,
            "the other EPNs and the retried victim to be home",
            proc=daemon,
            log=log,
        )
        wait_for(
            lambda: not live_processes_mentioning(str(dest)),
            20,
            "no rsync into the victim's folder",
            proc=daemon,
            log=log,
        )
        wait_for(lambda: all_runs_ended(instance), 60, "the runs to end", proc=daemon, log=log)

    assert sorted(stack.ignored()) == sorted([victim, *others])
    assert not tree_differences(stack.source / victim, dest)
    killed = instance.get_run_by_id(run.run_id)
    assert killed.status == dg.DagsterRunStatus.FAILURE
    carrying = runs_carrying(instance, victim)
    assert len(carrying) >= 2, "the victim must have been retried in a new run"
    retries = [r for r in carrying if r.run_id != run.run_id]
    # Brought home by one run; a retry run that waited while another took it carries it as skipped.
    outcomes = sorted(r.tags[f"assyncy/epn/{victim}"] for r in retries)
    assert outcomes.count("home") == 1 and set(outcomes) <= {"home", "skipped"}, [(r.run_id, r.tags) for r in retries]
    [home_run] = [r for r in retries if r.tags[f"assyncy/epn/{victim}"] == "home"]
    assert home_run.status == dg.DagsterRunStatus.SUCCESS
    assert passed_checks(instance).count(victim) == 1
    assert live_processes_mentioning(str(stack.destination_root)) == []


# -- (e) a UI-path run while the sensor ticks ------------------------------------------


def test_e_a_ui_materialisation_and_the_sensor_never_transfer_one_epn_at_once(stack, tmp_path):
    epn = "12282a"
    stack.configure(**{"rsync-bwlimit-kib": 256, "timezone": far_from_the_digest()})
    # About 12 s a transfer at 256 KiB/s: longer than the CLI takes to start, so the two meet.
    stack.lay_out(epn, frames=3, size=1024 * 1024)
    dest = stack.destination("ny79", epn)
    instance = stack.instance
    cli_log = tmp_path / "materialize.log"
    argv = materialize_argv(epn)

    with ConcurrencyWatch(dest, interval=0.2) as watch, dagster_daemon(tmp_path) as (daemon, log):
        # As a user clicking Materialize just as the sensor asks for the EPN.
        wait_for(lambda: runs_carrying(instance, epn), 120, f"the sensor's run for {epn}", proc=daemon, log=log)
        with open(cli_log, "w") as out, running(argv, stdout=out, stderr=subprocess.STDOUT) as cli:
            cli.wait(timeout=180)
        wait_for(
            lambda: (
                epn in stack.ignored()
                and not any(
                    r.status
                    in (
                        dg.DagsterRunStatus.QUEUED,
                        dg.DagsterRunStatus.NOT_STARTED,
                        dg.DagsterRunStatus.STARTING,
                        dg.DagsterRunStatus.STARTED,
                        dg.DagsterRunStatus.CANCELING,
                    )
                    for r in runs_carrying(instance, epn)
                )
            ),
            120,
            f"{epn} home and every run for it ended",
            proc=daemon,
            log=log,
        )

    runs = runs_carrying(instance, epn)
    summary = [(r.run_id[:8], r.job_name, r.status.value, r.tags.get(f"assyncy/epn/{epn}")) for r in runs]
    assert len(runs) >= 2, f"the sensor's run and the UI-path run: {summary}\n{cli_log.read_text()[-3000:]}"
    windows = transfer_windows(instance, runs, epn)
    assert windows, summary
    for (_, end, first), (start, _, second) in itertools.pairwise(windows):
        assert start >= end, f"runs {first} and {second} transferred {epn} at once: {windows}; {summary}"
    assert watch.most_rsyncs == 1, f"{watch.most_rsyncs} rsync invocations into {dest} at once; {summary}"
    assert stack.ignored() == [epn]
    assert not tree_differences(stack.source / epn, dest)
    print(f"runs for {epn}: {summary}; transfers: {len(windows)}; CLI exit code {cli.returncode}")
