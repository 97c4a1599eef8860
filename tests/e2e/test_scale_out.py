"""Scale-out on the real distributed engine, on this machine: PostgreSQL storage, Redis as
the Celery broker and result backend, the real `dagster-daemon`, and two Celery workers
started with assyncy-celery-worker.service's own `dagster-celery worker start` line, each
with its own DAGSTER_HOME holding the same dagster.yaml (etc/scale-out/dagster.yaml with
the database's address filled in) and, where the kernel allows, its own host name
(mover1, mover2), as two data-mover hosts would be.

A backlog is shared by both workers without ever running more rsyncs than max-tasks;
a worker SIGKILLed in the middle of a transfer has its run failed, its slot freed and
its EPN brought home by the other worker after the backoff.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from assyncy_dagster.config import load_settings
from assyncy_dagster.names import RSYNC_POOL
from assyncy_dagster.run_records import CELERY_TASK_TAG, LOST_TAG, WORKER_TAG, epn_tag
from assyncy_dagster.tick import plan_batches
from assyncy_dagster_demo.portal_sim import PortalSimulator
from assyncy_dagster_demo.testing.scale_out import (
    ConcurrencyWatch,
    Site,
    own_host_names_work,
    rsync_invocations,
    running_site,
)
from assyncy_dagster_demo.testing.smtp_sink import SmtpSink
from assyncy_dagster_demo.testing.stack import far_from_the_digest, lay_out_epns, mx_frames, write_config
from tests.support.faultkit import figure
from tests.support.helpers import (
    LocalSite,
    all_repatriation_runs,
    all_runs_ended,
    demo_accounts_portal_data,
    passed_checks,
    tree_differences,
    wait_for,
)

pytest.importorskip("dagster_celery", reason="needs the scale-out extra: pip install -e '.[scale-out]'")
pytest.importorskip("redis", reason="needs the scale-out extra (the redis client): pip install -e '.[scale-out]'")

pytestmark = [pytest.mark.scale_out, pytest.mark.slow]

EPN_DATA = dg.AssetKey("epn_data")
PROJECT = "scaleout"
BACKOFF_MINUTES = 0.05  # 3 s
_sites = itertools.count(1)


@dataclass
class Parts(LocalSite):
    """What one test's data movers share: the SFTP host, the portal, the database, the broker."""

    work: Path
    beamline: str
    database: object
    broker_url: str
    source: Path
    smtp: SmtpSink


@pytest.fixture
def scale_out_parts(sshd, postgres_server, redis_server, tmp_path, request) -> Iterator[callable]:
    """`make_parts(layout, **config)`: `layout` (EPN -> files) on a beamline folder of its own,
    their visits ended two days ago in a portal simulator, config.yml with `config`
    applied, a fresh database on the session's PostgreSQL and this test's Redis."""
    n = next(_sites)
    beamline = f"scaleout{n}"
    database = postgres_server.create_database(f"scale_out_{os.getpid()}_{n}")
    stack = []

    def make_parts(layout: dict[str, dict], **config: object) -> Parts:
        portal = PortalSimulator(demo_accounts_portal_data([(epn, "now-3d", "now-2d") for epn in layout]))
        smtp = SmtpSink()
        portal.start()
        stack.append(portal)
        smtp.start()
        stack.append(smtp)
        lay_out_epns(sshd, layout, beamline=beamline)
        path = write_config(
            tmp_path / "etc" / "config.yml",
            portal_url=portal.url,
            sshd=sshd,
            smtp_port=smtp.port,
            destination_root=tmp_path / "destination",
            epn_cap_map={epn[:5]: PROJECT for epn in layout},
            max_tasks=int(config.pop("max-tasks", 2)),
            extra={
                "beamline": beamline,
                "timezone": far_from_the_digest(),
                "retry-backoff-minutes": BACKOFF_MINUTES,
                **config,
            },
        )
        return Parts(
            config_path=path,
            destination_root=load_settings(path).destination_root_path,
            work=tmp_path,
            beamline=beamline,
            database=database,
            broker_url=redis_server.url(0),
            source=sshd.beamline_dir(beamline),
            smtp=smtp,
        )

    try:
        yield make_parts
    finally:
        for server in reversed(stack):
            server.stop()
        shutil.rmtree(sshd.beamline_dir(beamline), ignore_errors=True)


def _two_movers(parts: Parts, *, concurrency: int, own_hosts: bool):
    """Two Celery workers and the daemon on `parts`, as two data-mover hosts (running_site)."""
    return running_site(
        parts.work,
        parts.database,
        parts.broker_url,
        parts.config_path,
        workers=2,
        concurrency=concurrency,
        own_hosts=own_hosts,
        dequeue_interval_seconds=1,
        poll_interval_seconds=5,
        start_timeout_seconds=120,
    )


def materialisations(instance: dg.DagsterInstance, epn: str) -> list[dg.EventLogRecord]:
    return list(
        instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=EPN_DATA, asset_partitions=[epn]), limit=10
        ).records
    )


def worker_host(run: dg.DagsterRun) -> str:
    return run.tags.get(WORKER_TAG, "").partition(":")[0]


def ran_on(site: Site, run: dg.DagsterRun) -> str | None:
    """The name of the worker whose log shows it took the run's Celery task."""
    worker = site.worker_of_task(run.tags.get(CELERY_TASK_TAG, "?"))
    return worker.name if worker else None


@pytest.mark.timeout(360)
def test_a_paused_worker_never_writes_beside_the_run_that_takes_its_epn_over(scale_out_parts):
    """SIGSTOP of one worker's whole process group in the middle of an rsync, past Celery's ping
    limit, then SIGCONT: its rsync (in a session of its own) is ended by the step's watch; the
    sweep ends its run on the silent worker, but its claim holds while its heartbeat is fresh, so
    the EPN is retried on the other worker only once nothing of the paused one can still write.
    Never two rsyncs into the destination (sampled every 50 ms), the EPN recorded once, one
    failure e-mail (for the run the sweep ended)."""
    victim = "63000a"
    layout = {victim: mx_frames(2, 4 << 20)}  # 8 MiB at 256 KiB/s: 32 s, still copying when paused
    parts = scale_out_parts(layout, **{"max-tasks": 2, "max-epns-per-run": 1, "rsync-bwlimit-kib": 256})
    dest = parts.destination(PROJECT, victim)
    with _two_movers(parts, concurrency=1, own_hosts=own_host_names_work()) as site:
        instance = site.instance
        daemon = {"proc": site.daemon.proc, "log": site.daemon.log}
        wait_for(lambda: rsync_invocations(str(dest)), 120, f"rsync to be writing {victim}", **daemon)
        [run] = [
            r
            for r in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
            if r.tags.get(epn_tag(victim)) == "running"
        ]
        paused = site.worker_of_task(run.tags[CELERY_TASK_TAG])
        assert paused is not None and paused.proc is not None

        os.killpg(paused.proc.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        most, samples, writers, ended_after = 0, 0, set(), None
        try:
            # Past the sweep's verdict on the silent worker and past the heartbeat limit, while
            # the other worker may take the EPN over.
            while time.monotonic() - stopped_at < 45:
                found = rsync_invocations(str(dest))
                most, samples = max(most, len(found)), samples + 1
                writers |= found
                if ended_after is None and instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE:
                    ended_after = time.monotonic() - stopped_at
                time.sleep(0.05)
        finally:
            os.killpg(paused.proc.pid, signal.SIGCONT)
        while victim not in parts.ignored() and time.monotonic() - stopped_at < 200:
            found = rsync_invocations(str(dest))
            most, samples = max(most, len(found)), samples + 1
            time.sleep(0.05)
        wait_for(lambda: victim in parts.ignored(), 10, f"{victim} in ignore.yml", **daemon)
        wait_for(lambda: all_runs_ended(instance), 60, "the runs to end", **daemon)
        records = materialisations(instance, victim)
        runs = [r for r in all_repatriation_runs(instance) if epn_tag(victim) in r.tags]
        emails = [m for m in parts.smtp.messages if run.run_id in m.get_body(preferencelist=("plain",)).get_content()]

    assert most == 1, f"{most} rsyncs wrote into {victim} at once"
    assert ended_after is not None, "the sweep never ended the paused worker's run"
    assert len(records) == 1 and records[0].run_id != run.run_id  # brought home once, by the other worker
    assert not tree_differences(parts.source / victim, dest)
    assert all(r.tags[epn_tag(victim)] not in ("queued", "running") for r in runs)
    assert len(emails) == 1, [m["Subject"] for m in parts.smtp.messages]
    figure(
        f"scale-out paused worker: SIGSTOP of {paused.name} mid-transfer; its run ended by the sweep "
        f"{ended_after:.1f} s later; {samples} samples every 50 ms, at most {most} rsync in the destination "
        f"({len(writers)} rsync invocation(s) seen while it was stopped); recorded once, by another run; "
        f"{len(emails)} failure e-mail for the paused run"
    )


# -- a backlog over two workers ----------------------------------------------------------


@pytest.mark.timeout(360)
def test_two_workers_share_a_backlog_and_never_run_more_rsyncs_than_max_tasks(scale_out_parts):
    """24 due EPNs of 200 KB; max-tasks 3 while the two workers could take 4 runs at once
    (--concurrency=2 each): the rsync pool, whose slots live in PostgreSQL, is the bound.
    Three runs at once cannot all fit on one worker, so both must work; each rsync is
    slowed to about 1 s (rsync-bwlimit-kib 200) so that the runs' transfers overlap."""
    epns = [f"{61000 + i}a" for i in range(24)]
    max_tasks, per_run = 3, 4
    parts = scale_out_parts(
        {epn: mx_frames(4, 50_000) for epn in epns},
        **{"max-tasks": max_tasks, "max-epns-per-run": per_run, "rsync-bwlimit-kib": 200},
    )
    batches = plan_batches(epns, max_tasks, per_run)
    own_hosts = own_host_names_work()
    started = time.monotonic()
    with _two_movers(parts, concurrency=2, own_hosts=own_hosts) as site:
        instance = site.instance

        def claimed_slots() -> int:
            return len(instance.event_log_storage.get_concurrency_info(RSYNC_POOL).claimed_slots)

        with ConcurrencyWatch(parts.destination_root, slots=claimed_slots, interval=0.1) as watch:
            wait_for(
                lambda: set(parts.ignored()) >= set(epns),
                150,
                f"all {len(epns)} EPNs in ignore.yml",
                proc=site.daemon.proc,
                log=site.daemon.log,
            )
            seconds = time.monotonic() - started
            wait_for(
                lambda: all_runs_ended(instance), 60, "the runs to end", proc=site.daemon.proc, log=site.daemon.log
            )
        runs = all_repatriation_runs(instance)
        workers = {run.run_id: ran_on(site, run) for run in runs}
        hosts = [(site.worker_of_task(run.tags.get(CELERY_TASK_TAG, "?")), worker_host(run)) for run in runs]

    assert set(parts.ignored()) == set(epns)
    for epn in epns:
        [record] = materialisations(instance, epn)
        assert record.asset_materialization.metadata["verified"].value is True, epn
    assert sorted(passed_checks(instance)) == sorted(epns)
    for epn in (epns[0], epns[-1]):
        assert not tree_differences(parts.source / epn, parts.destination(PROJECT, epn))

    # The sensor's batches (at least max-tasks runs, at most max-epns-per-run EPNs each) ...
    assert len(batches) >= max_tasks and max(len(b) for b in batches) <= per_run
    assert sorted(int(run.tags["assyncy/epn_count"]) for run in runs) == sorted(len(b) for b in batches)
    assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs), [(r.run_id, r.status) for r in runs]
    # ... went to both workers, each run to exactly one, and the run's own worker tag agrees.
    assert None not in workers.values(), workers
    assert set(workers.values()) == {w.name for w in site.workers}, workers
    if own_hosts:
        assert all(worker.host == tagged for worker, tagged in hosts), hosts
    # Never more transfers than max-tasks across both workers, by rsync processes and by pool
    # slots; and the pool was full at some moment, so it was the bound, not the workers.
    assert watch.most_rsyncs <= max_tasks, f"{watch.most_rsyncs} rsyncs at once"
    assert watch.most_slots == max_tasks, f"at most {watch.most_slots} rsync pool slots claimed at once"
    assert watch.most_rsyncs >= 2, f"the watch saw at most {watch.most_rsyncs} rsync at once"
    assert not rsync_invocations(str(parts.destination_root))
    per_worker = {name: list(workers.values()).count(name) for name in sorted(set(workers.values()))}
    figure(
        f"scale-out backlog: {len(epns)} EPNs of 200 KB (rsync at 200 KiB/s) home in {seconds:.1f} s "
        f"(workers and daemon started included) over 2 Celery workers, runs per worker {per_worker}; "
        f"at most {watch.most_rsyncs} rsyncs "
        f"and {watch.most_slots} pool slots at once (max-tasks {max_tasks}; {watch.samples} samples)"
        + ("" if own_hosts else "; workers shared this host's name (no UTS namespace)")
    )


# -- a worker dies ---------------------------------------------------------------------------


@pytest.mark.timeout(360)
def test_a_killed_worker_s_run_is_failed_and_its_epn_brought_home_by_the_other_worker(scale_out_parts):
    """SIGKILL of one worker's whole process group in the middle of an rsync (slowed with
    rsync-bwlimit-kib): the run is failed (epn_sensor: the task's Celery node no longer
    answers), its slot is freed, nothing of the victim is recorded, and after the backoff
    the surviving worker brings it home."""
    victim, others = "62000a", ["62001a", "62002a"]
    layout = {victim: mx_frames(2, 512 * 1024), **{epn: mx_frames(2, 50_000) for epn in others}}  # victim: 4 s
    parts = scale_out_parts(layout, **{"max-tasks": 2, "max-epns-per-run": 1, "rsync-bwlimit-kib": 256})
    dest = parts.destination(PROJECT, victim)
    own_hosts = own_host_names_work()
    with _two_movers(parts, concurrency=1, own_hosts=own_hosts) as site:
        instance = site.instance
        daemon = {"proc": site.daemon.proc, "log": site.daemon.log}
        wait_for(
            lambda: dest.exists() and any(p.is_file() for p in dest.rglob("*")) and rsync_invocations(str(dest)),
            120,
            f"rsync to be writing {victim}",
            **daemon,
        )
        [run] = [
            r
            for r in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
            if r.tags.get(epn_tag(victim)) == "running"
        ]
        killed = site.worker_of_task(run.tags[CELERY_TASK_TAG])
        assert killed is not None
        [survivor] = [w for w in site.workers if w is not killed]

        killed_at = time.monotonic()
        killed.kill()
        wait_for(lambda: not rsync_invocations(str(dest)), 20, "the killed worker's rsync to end", **daemon)
        wait_for(
            lambda: instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE,
            90,
            "the killed worker's run to be failed",
            **daemon,
        )
        failed_after = time.monotonic() - killed_at
        ended = instance.get_run_by_id(run.run_id)
        # Nothing of the victim is recorded, and the run holds no rsync slot any more.
        assert victim not in parts.ignored()
        assert not materialisations(instance, victim)
        assert run.run_id not in instance.event_log_storage.get_concurrency_run_ids()

        wait_for(lambda: set(parts.ignored()) >= set(layout), 120, "every EPN, the victim too, in ignore.yml", **daemon)
        home_after = time.monotonic() - killed_at
        wait_for(lambda: all_runs_ended(instance), 60, "the runs to end", **daemon)
        retries = [r for r in all_repatriation_runs(instance) if r.run_id != run.run_id and epn_tag(victim) in r.tags]
        retry_worker = {r.run_id: ran_on(site, r) for r in retries}
        failed_record = instance.get_run_record_by_id(run.run_id)
        retry_records = [instance.get_run_record_by_id(r.run_id) for r in retries]

    why = ended.tags[LOST_TAG]
    if own_hosts:  # a worker on "another host": only Celery can say it is gone
        assert "Celery worker" in why and killed.node in why, why
    assert set(parts.ignored()) == set(layout)
    assert not tree_differences(parts.source / victim, dest)
    [retry] = retries
    assert retry.status == dg.DagsterRunStatus.SUCCESS and retry.tags[epn_tag(victim)] == "home"
    assert retry_worker[retry.run_id] == survivor.name
    # Retried after the backoff, counted from the failure.
    [retry_record] = retry_records
    waited = retry_record.create_timestamp.timestamp() - failed_record.end_time
    assert waited >= BACKOFF_MINUTES * 60 * 0.9, f"retried {waited:.1f} s after the failure"
    [record] = materialisations(instance, victim)
    assert record.run_id == retry.run_id
    assert passed_checks(instance).count(victim) == 1
    assert not rsync_invocations(str(parts.destination_root))
    figure(
        f"scale-out worker kill: run failed {failed_after:.1f} s after SIGKILL of worker {killed.name} "
        f"({why.split(':')[0]}); victim home via {survivor.name} {home_after:.1f} s after the kill "
        f"(backoff {BACKOFF_MINUTES * 60:.0f} s, then a 1 MB transfer at 256 KiB/s)"
    )
