"""What the Dagster instance says about each EPN's repatriation runs.

A run may carry many EPNs (a batch from `epn_sensor` or `mxsync`, a backfill
range from the UI), so each EPN's own outcome is kept as a run tag,
`assyncy/epn/<epn>`: `queued` when the sensor asks for it, `running` when the
step starts, then `home`, `dry-run`, `failed`, `skipped` or `empty` (nothing to
fetch yet: held back, not failed). The run that does the work also names its
worker process (`assyncy/worker`) and writes a heartbeat (claims.py), so that a
worker killed outright (SIGKILL, OOM, host crash), which Dagster's default run
launcher cannot see, is noticed and its run ended, on positive evidence only.
Once a run has ended, none of its EPNs stays `queued` or `running`.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from .claims import HEARTBEAT_QUIET_SECONDS, WORKER_TAG, forget_run, heartbeats, why_gone, worker_is_gone
from .outcomes import Outcome
from .planning import RunHistory

EPN_TAG_PREFIX = "assyncy/epn/"
INTERRUPTED_TAG = "assyncy/interrupted"
LOST_TAG = "assyncy/worker-lost"
# Set by dagster-celery's CeleryRunLauncher: the Celery task that carries the run.
CELERY_TASK_TAG = "dagster-celery/task_id"
# When the run's Celery worker node first did not answer (epoch seconds; "" once it answers again).
SILENT_TAG = "assyncy/worker-silent-since"
PING_SECONDS = 2.0
PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
EPN_DATA = dg.AssetKey("epn_data")

IN_FLIGHT = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
)
ENDED_BADLY = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
_log = logging.getLogger("assyncy.sync")


def epn_tag(epn: str) -> str:
    return EPN_TAG_PREFIX + epn


def outcome_tags(epns: Iterable[str], outcome: Outcome) -> dict[str, str]:
    return {epn_tag(epn): outcome.value for epn in epns}


def tagged_epns(tags: Mapping[str, str]) -> dict[str, str]:
    """EPN -> outcome, from a run's `assyncy/epn/<epn>` tags."""
    return {k[len(EPN_TAG_PREFIX) :]: v for k, v in tags.items() if k.startswith(EPN_TAG_PREFIX)}


# -- which EPNs a run carries --------------------------------------------------


def touches_epn_data(run: dg.DagsterRun, repatriation_job: str) -> bool:
    """A run of the batch job, or any run (UI, CLI) that materialises epn_data."""
    if run.job_name == repatriation_job:
        return True
    return EPN_DATA in set(run.asset_selection or ())


def run_epns(run: dg.DagsterRun, partition_order: Sequence[str]) -> set[str]:
    """The EPNs a run repatriates: its EPN tags, else its partition or partition range."""
    epns = set(tagged_epns(run.tags))
    if epns:
        return epns
    if PARTITION_TAG in run.tags:
        return {run.tags[PARTITION_TAG]}
    start, end = run.tags.get(RANGE_START_TAG), run.tags.get(RANGE_END_TAG)
    if start and end and start in partition_order and end in partition_order:
        i, j = partition_order.index(start), partition_order.index(end)
        return set(partition_order[i : j + 1])
    return set()


@dataclass(frozen=True)
class InFlight:
    """Repatriation runs not yet ended, and what they carry."""

    epns: dict[str, str]  # EPN -> run id
    runs: list[dg.RunRecord]


def in_flight(instance: dg.DagsterInstance, repatriation_job: str, partition_order: Sequence[str]) -> InFlight:
    records = instance.get_run_records(dg.RunsFilter(statuses=list(IN_FLIGHT)))
    epns: dict[str, str] = {}
    runs = []
    for record in records:
        run = record.dagster_run
        if not touches_epn_data(run, repatriation_job):
            continue
        runs.append(record)
        for epn in run_epns(run, partition_order):
            epns.setdefault(epn, run.run_id)
    return InFlight(epns, runs)


def end_lost_runs(
    instance: dg.DagsterInstance,
    flights: InFlight,
    stale_after_hours: float,
    now: datetime | None = None,
    log: logging.Logger | Any = None,
) -> dict[str, str]:
    """End runs whose worker is known to be gone or that ran past `stale_after_hours`; free
    their pool slots and their EPN claims, and fail the EPNs they left queued or running.

    A worker is gone only on positive evidence (claims.why_gone: a stopped heartbeat, or its
    process dead as seen from its own host and PID namespace), or when its Celery task failed
    or, for a run without a heartbeat, its Celery worker stopped answering. Returns run id ->
    why, for the sensor's report. Their EPNs then count as failed, so they are retried with
    the usual backoff."""
    log = log or _log
    now = now or datetime.now(UTC)
    ended: dict[str, str] = {}
    beats = heartbeats(instance, [r.dagster_run.run_id for r in flights.runs])
    elsewhere = celery_workers_gone(instance, flights.runs, log=log, beats=beats)
    for record in flights.runs:
        run = record.dagster_run
        started = record.start_time
        why = why_gone(run, beats.get(run.run_id), now.timestamp())
        if why is not None and not worker_is_gone(run.tags.get(WORKER_TAG, "")):
            _terminate(instance, run.run_id, log)  # its heartbeat stopped: it may be only cut off, not dead
        elif run.run_id in elsewhere:
            why = elsewhere[run.run_id]
            _terminate(instance, run.run_id, log)
        elif started and now.timestamp() - started > stale_after_hours * 3600:
            why = f"in flight for more than stale-run-hours ({stale_after_hours:g} h)"
            _terminate(instance, run.run_id, log)
        if why is None:
            continue
        fresh = instance.get_run_by_id(run.run_id)
        if fresh is None or fresh.status not in IN_FLIGHT:
            continue
        instance.add_run_tags(run.run_id, {LOST_TAG: why})
        # Its slot first: whoever sees the run failed sees its slot free too.
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        instance.report_run_failed(fresh, message=f"assyncy: run ended as failed: {why}")
        if why_gone(run, beats.get(run.run_id), now.timestamp()) is not None:
            # Its worker is known gone: nothing of it still writes. Otherwise (a Celery worker that
            # stopped answering, a run past stale-run-hours) it may be only paused or cut off: its
            # claims hold until its heartbeat stops (claims.claim_holder_gone).
            forget_run(instance, run.run_id, tagged_epns(fresh.tags))
        ended[run.run_id] = why
    # A run that Dagster itself saw end (e.g. its code server noticed the worker die)
    # can still hold its rsync slot until run monitoring's next pass; free it now.
    storage = instance.event_log_storage
    holders = storage.get_concurrency_run_ids()
    if holders:
        for record in instance.get_run_records(dg.RunsFilter(run_ids=list(holders))):
            if record.dagster_run.status not in IN_FLIGHT:
                storage.free_concurrency_slots_for_run(record.dagster_run.run_id)
    settle_ended_runs(instance, log, now)
    return ended


# How far back (by the run's last update) the sweep looks for ended runs that left EPNs unsettled.
SETTLE_WINDOW = timedelta(hours=6)
_UNSETTLED = (Outcome.QUEUED.value, Outcome.RUNNING.value)


def settle_ended_runs(
    instance: dg.DagsterInstance, log: logging.Logger | Any = None, now: datetime | None = None
) -> dict[str, list[str]]:
    """The sweep's assertion that no ended run keeps an EPN `queued` or `running`: each one found
    (a worker killed outright, a run terminated before its step began) is tagged `failed`, with
    a log line naming it. Returns run id -> the EPNs settled."""
    log = log or _log
    now = now or datetime.now(UTC)
    records = instance.get_run_records(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS, *ENDED_BADLY], updated_after=now - SETTLE_WINDOW),
        limit=500,
    )
    settled: dict[str, list[str]] = {}
    for record in records:
        run = record.dagster_run
        left = sorted(epn for epn, outcome in tagged_epns(run.tags).items() if outcome in _UNSETTLED)
        if not left:
            continue
        instance.add_run_tags(run.run_id, outcome_tags(left, Outcome.FAILED))
        log.warning(
            f"run {run.run_id} ended ({run.status.value}) with EPN(s) {', '.join(left)} still queued or running: "
            "recorded as failed"
        )
        settled[run.run_id] = left
    return settled


def _terminate(instance: dg.DagsterInstance, run_id: str, log: logging.Logger | Any) -> None:
    # A launcher that cannot reach the worker raises: the run is ended anyway.
    try:
        instance.run_launcher.terminate(run_id)
    except Exception as exc:
        log.warning(f"run {run_id}: the run launcher could not terminate it ({exc}); ending it anyway")


def celery_workers_gone(
    instance: dg.DagsterInstance,
    records: Sequence[dg.RunRecord],
    app=None,
    log: logging.Logger | Any = None,
    beats: Mapping[str, float] | None = None,
) -> dict[str, str]:
    """Run id -> why, for started runs whose Celery worker (on another host) is gone.

    The daemon's run monitoring asks Celery only for the task's state, and a worker
    killed outright (SIGKILL of the whole worker, OOM of its cgroup, power loss)
    leaves it STARTED for ever. So: a run whose task FAILED (the worker saw its run's
    process die) is gone; and so is a run whose task is STARTED on a worker node that
    answered no ping at two checks in a row (two sensor ticks, 30 s apart in production;
    the first is remembered in SILENT_TAG), unless its transfer step's heartbeat is
    younger than claims.HEARTBEAT_QUIET_SECONDS: a worker cut off from the broker but
    still copying (and writing its heartbeat to the database) keeps its run, and the
    heartbeat's own limit judges it. Needs a result backend that every process can read
    (Redis), not `rpc://`. Anything Celery cannot answer (no
    Celery launcher, broker down) ends nothing, with a log line. `app`: the Celery app
    to ask (default: the instance's CeleryRunLauncher's)."""
    log = log or _log
    beats = beats or {}
    candidates = [
        r.dagster_run
        for r in records
        if r.dagster_run.status == dg.DagsterRunStatus.STARTED
        and r.dagster_run.tags.get(CELERY_TASK_TAG)
        and not _on_this_host(r.dagster_run.tags.get(WORKER_TAG, ""))
    ]
    if not candidates:
        return {}
    if app is None:
        app = getattr(instance.run_launcher, "celery", None)
        if app is None:
            return {}
    gone: dict[str, str] = {}
    nodes: dict[str, str] = {}  # run id -> Celery node (name@host) running its task
    try:
        for run in candidates:
            result = app.AsyncResult(run.tags[CELERY_TASK_TAG])
            if result.state == "FAILURE":
                gone[run.run_id] = f"its Celery task failed: {result.result!r}"[:300]
            elif result.state == "STARTED" and isinstance(result.info, dict) and result.info.get("hostname"):
                nodes[run.run_id] = str(result.info["hostname"])
        silent = _silent_nodes(app, set(nodes.values()))
    except Exception as exc:  # the broker or backend is unreachable: run monitoring's bounds remain
        log.warning(f"epn_sensor: cannot ask Celery about {len(candidates)} run(s) on other hosts: {exc!r}")
        return gone
    stamp = time.time()
    for run in candidates:
        node = nodes.get(run.run_id)
        if node is None:
            continue
        since = _stamp(run.tags.get(SILENT_TAG, ""))
        if node not in silent:
            if since is not None:
                instance.add_run_tags(run.run_id, {SILENT_TAG: ""})
        elif since is not None:
            beat = beats.get(run.run_id)
            if beat is not None and stamp - beat <= HEARTBEAT_QUIET_SECONDS:
                log.warning(
                    f"run {run.run_id}: its Celery worker {node} has not answered for {stamp - since:.0f} s, but "
                    f"its transfer step wrote its heartbeat {max(0.0, stamp - beat):.0f} s ago: cut off from the "
                    "broker, still working; not ended"
                )
                continue
            quiet = f", and its heartbeat stopped {stamp - beat:.0f} s ago" if beat is not None else ""
            gone[run.run_id] = (
                f"its Celery worker {node} has not answered for {stamp - since:.0f} s{quiet}: "
                "the worker or its host is gone"
            )
        else:
            instance.add_run_tags(run.run_id, {SILENT_TAG: f"{stamp:.3f}"})
    return gone


def _stamp(text: str) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _on_this_host(worker: str) -> bool:
    return worker.partition(":")[0] == socket.gethostname()


def _silent_nodes(app, nodes: set[str]) -> set[str]:
    """The Celery nodes among `nodes` that do not answer a ping within PING_SECONDS."""
    if not nodes:
        return set()
    replies = app.control.ping(destination=sorted(nodes), timeout=PING_SECONDS, limit=len(nodes))
    answered = {name for reply in replies or [] for name in reply}
    return nodes - answered


# -- the history of one EPN ------------------------------------------------------


def epn_history(instance: dg.DagsterInstance, epn: str, limit: int = 20) -> RunHistory | None:
    """The latest ended repatriation of `epn` and how many failed in a row, or None if never tried.

    A run's own tag for the EPN decides; an EPN left `queued` or `running` in a run that
    failed or was cancelled (terminated, worker killed) failed with it, unless a
    shutdown interrupted it (INTERRUPTED_TAG: retried at once)."""
    records = instance.get_run_records(dg.RunsFilter(tags={epn_tag(epn): [o.value for o in Outcome]}), limit=limit)
    attempts: list[tuple[dg.RunRecord, Outcome, bool]] = []
    for record in records:
        run = record.dagster_run
        outcome = run.tags.get(epn_tag(epn))
        if run.status in IN_FLIGHT:  # in flight with its run, whatever came of it so far
            return RunHistory(Outcome.QUEUED if outcome == Outcome.QUEUED.value else Outcome.RUNNING, run.run_id)
        if outcome == Outcome.SKIPPED.value:
            continue
        if outcome in (Outcome.HOME.value, Outcome.DRY_RUN.value, Outcome.EMPTY.value):
            attempts.append((record, Outcome(outcome), False))
        elif outcome == Outcome.FAILED.value or run.status in ENDED_BADLY:
            attempts.append((record, Outcome.FAILED, INTERRUPTED_TAG in run.tags))
        else:
            attempts.append((record, Outcome.HOME, False))
    if not attempts:
        return None
    last, status, interrupted = attempts[0]
    if status.succeeded:
        return RunHistory(status, last.dagster_run.run_id)
    failures = 0
    for _, each, was_interrupted in attempts:
        if each is not status:
            break
        if not was_interrupted:
            failures += 1
    ended_at = datetime.fromtimestamp(last.end_time, UTC) if last.end_time else None
    return RunHistory(status, last.dagster_run.run_id, ended_at, 0 if interrupted else failures)


def last_verified(instance: dg.DagsterInstance, epn: str) -> dict | None:
    """What the EPN's last verified sync recorded about its source (`source_files`,
    `source_bytes`, `source_digest`) and when (`timestamp`), or None if it has none.

    A dry-run records no digest; only a real, verified transfer does."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=EPN_DATA, asset_partitions=[epn]), limit=5
    ).records
    for record in records:
        materialization = record.asset_materialization
        if materialization is None:
            continue
        meta = {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
        if meta.get("verified") and meta.get("source_digest"):
            return {**meta, "timestamp": record.timestamp}
    return None


def step_failure_message(events: Iterable[dg.DagsterEvent]) -> str | None:
    """The first failing step's own message: a Failure's description, else the error."""
    for event in events:
        data = event.step_failure_data if event.is_step_failure else None
        if data and data.user_failure_data and data.user_failure_data.description:
            return data.user_failure_data.description
        if data and data.error:
            return data.error.message.strip()
    return None


def home_since_requested(instance: dg.DagsterInstance, epn: str, run_id: str) -> str | None:
    """The run that materialised `epn` (its data at the destination) after run `run_id` was
    created, or None: a run that waited behind another one for an EPN finds it done."""
    record = instance.get_run_record_by_id(run_id)
    if record is None:
        return None
    found = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=EPN_DATA, asset_partitions=[epn], after_timestamp=record.create_timestamp.timestamp()
        ),
        limit=5,
    ).records
    return next((r.run_id for r in found if r.run_id != run_id), None)
