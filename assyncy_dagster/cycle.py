"""One watch cycle without the daemon: plan a tick as `epn_sensor` does, then run what it asks for.

`mxsync` and the demo use this, so they apply exactly the sensor's rules and
record their runs in the same Dagster instance the UI shows.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
import warnings
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from .config import load_settings
from .definitions import build_definitions, build_resources
from .names import ALERT_JOB, REPATRIATION_JOB, REPORT_JOB
from .outcomes import Outcome
from .run_configs import batch_epns
from .run_records import EPN_DATA, INTERRUPTED_TAG, step_failure_message, tagged_epns
from .tick import plan_tick

log = logging.getLogger("assyncy.sync")
WORKER_RESULT_PREFIX = "assyncy-run-outcome: "


@dataclass
class RunOutcome:
    job: str
    partition: str | None
    run_id: str
    success: bool
    error: str = ""
    metadata: dict = field(default_factory=dict)
    outcome: str = ""  # a repatriation's: what the run did with the EPN (outcomes.Outcome's value)

    @property
    def not_done_here(self) -> str:
        """Why a repatriation that did not fail moved nothing in this run (Outcome.moved_nothing), or ""."""
        return Outcome(self.outcome).moved_nothing if self.outcome else ""


@dataclass
class CycleReport:
    skipped: str | None = None
    held_back: dict[str, str] = field(default_factory=dict)
    new_partitions: list[str] = field(default_factory=list)
    runs: list[RunOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[RunOutcome]:
        return [r for r in self.runs if not r.success]

    def by_job(self, job: str) -> list[RunOutcome]:
        return [r for r in self.runs if r.job == job]


def _epn_metadata(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    """Each EPN's epn_data metadata, by EPN: its materialisation's, or a dry-run's observation's."""
    found: dict[str, dict] = {}
    events: list[dg.AssetMaterialization | dg.AssetObservation] = [
        e.step_materialization_data.materialization for e in result.get_asset_materialization_events()
    ]
    events += [e.asset_observation_data.asset_observation for e in result.get_asset_observation_events()]
    for event in events:
        if event and event.asset_key == EPN_DATA and event.partition:
            found[event.partition] = {k: getattr(v, "value", v) for k, v in event.metadata.items()}
    return found


def _epn_errors(events: Iterable[dg.DagsterEvent]) -> dict[str, str]:
    for event in events:
        data = event.step_failure_data if event.is_step_failure else None
        if data and data.user_failure_data and "errors" in data.user_failure_data.metadata:
            errors = data.user_failure_data.metadata["errors"].value
            if isinstance(errors, Mapping):  # epn_data's failure: {EPN: error} as JSON metadata
                return {str(epn): str(error) for epn, error in errors.items()}
    return {}


# Skipped: another run held the EPN's claim, or brought it home meanwhile; not this run's failure.
_NOT_FAILED = tuple(o.value for o in Outcome if o.succeeded or o.moved_nothing)


def execute_request(
    defs: dg.Definitions, instance: dg.DagsterInstance, request: dg.RunRequest, run_id: str | None = None
) -> list[RunOutcome]:
    """Run one requested run in this process: one outcome per EPN of a repatriation batch,
    else one for the run."""
    job_name = _job_name(request)
    job = defs.resolve_job_def(job_name)
    result = job.execute_in_process(
        run_config=request.run_config,
        instance=instance,
        partition_key=request.partition_key,
        tags=request.tags,
        raise_on_error=False,
        run_id=run_id,
    )
    run_error = "" if result.success else step_failure_message(result.all_events) or "run failed"
    if job_name != REPATRIATION_JOB:
        return [RunOutcome(job_name, request.partition_key, result.run_id, result.success, run_error)]
    run = instance.get_run_by_id(result.run_id)
    assert run is not None, "the run just executed in this process is in the instance"
    outcomes = tagged_epns(run.tags)
    metadata, errors = _epn_metadata(result), _epn_errors(result.all_events)
    return [
        RunOutcome(
            job=job_name,
            partition=epn,
            run_id=result.run_id,
            # An empty source folder is held back, not failed: the EPN is looked at again later.
            success=outcome in _NOT_FAILED,
            error="" if outcome in _NOT_FAILED else errors.get(epn, run_error),
            metadata=metadata.get(epn, {}),
            outcome=outcome,
        )
        for epn, outcome in outcomes.items()
    ]


def quiet_dagster_previews() -> None:
    """Hide Dagster's notices that a feature we use (partitioned checks, log
    handlers in dagster.yaml) is in preview or beta, here and in the workers."""
    for category in (dg.BetaWarning, dg.PreviewWarning):
        warnings.filterwarnings("ignore", category=category)
    os.environ["ASSYNCY_QUIET_PREVIEWS"] = "1"


class Workers:
    """Repatriation runs, each in its own worker process.

    Dagster's in-process execution is not safe in several threads at once (its
    log set-up reconfigures logging globally), so parallel transfers get a
    process each. `stop()` asks every worker to end: the worker's rsync is
    killed and its run is recorded as failed, never as repatriated.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self._signalled: set[subprocess.Popen] = set()
        self.stopping = threading.Event()

    def run(self, config_path: Path, request: dg.RunRequest, instance: dg.DagsterInstance) -> list[RunOutcome]:
        epns = _request_epns(request)
        job_name = _job_name(request)
        if self.stopping.is_set():
            return [RunOutcome(job_name, epn, "", False, "not started: stopping") for epn in epns]
        run_id = str(uuid.uuid4())
        proc = subprocess.Popen(worker_argv(config_path, request, run_id), stdout=subprocess.PIPE, text=True)
        with self._lock:
            self._procs.add(proc)
        try:
            out, _ = proc.communicate()
        finally:
            with self._lock:
                self._procs.discard(proc)
                signalled = proc in self._signalled
        outcomes = [
            RunOutcome(job_name, epn, run_id, False, f"worker exited with status {proc.returncode}") for epn in epns
        ]
        for line in reversed(out.splitlines()):
            if line.startswith(WORKER_RESULT_PREFIX):
                outcomes = [RunOutcome(**item) for item in json.loads(line[len(WORKER_RESULT_PREFIX) :])]
                break
        if signalled and not all(o.success for o in outcomes) and instance.has_run(run_id):
            # Stopped by a shutdown, not the EPNs' fault: the next cycle retries them without backoff.
            instance.add_run_tags(run_id, {INTERRUPTED_TAG: "shutdown"})
        return outcomes

    def stop(self) -> None:
        self.stopping.set()
        with self._lock:
            for proc in self._procs:
                if proc.poll() is None:
                    self._signalled.add(proc)
                    proc.send_signal(signal.SIGTERM)


def worker_argv(config_path: str | Path, request: dg.RunRequest, run_id: str) -> list[str]:
    """The command line of one run in a process of its own (`python -m assyncy_dagster.worker`,
    whose options these are), as `Workers` starts it."""
    return [
        sys.executable,
        "-m",
        "assyncy_dagster.worker",
        *("--config", str(config_path), "--job", _job_name(request)),
        *("--run-config", json.dumps(request.run_config), "--tags", json.dumps(dict(request.tags))),
        *("--run-id", run_id),
    ]


def _job_name(request: dg.RunRequest) -> str:
    if request.job_name is None:  # every sensor and schedule here names its job
        raise ValueError(f"run request {request.run_key!r} names no job")
    return request.job_name


def _request_epns(request: dg.RunRequest) -> list[str]:
    return batch_epns(request.run_config) or [str(request.partition_key)]


def run_cycle(
    config_path: str | Path,
    instance: dg.DagsterInstance,
    *,
    execute: bool | None = None,
    logger: logging.Logger | None = None,
    workers: Workers | None = None,
    alerts: bool = True,
) -> CycleReport:
    """Evaluate the sensor once, add the new partitions, run the repatriations
    (at most `max-tasks` at once) and then the alert (unless `alerts` is false:
    mxsync leaves alerts to epnalert, as the old tool did). `execute`
    overrides config.yml's `execute`, as mxsync --execute does."""
    logger = logger or log
    path = Path(config_path).absolute()
    defs = build_definitions(path)  # also makes `path` this process's and its workers' config.yml
    resources = build_resources()
    settings = load_settings(path)
    if execute is not None:  # mxsync --execute; the batches' run config carries the mode
        settings = settings.model_copy(update={"execute": execute})
    plan, result = plan_tick(instance, settings, resources["portal"], resources["sftp"], logger)
    held_back = plan.held_back if plan else {}
    if isinstance(result, dg.SkipReason):
        logger.info(result.skip_message)
        return CycleReport(skipped=result.skip_message, held_back=held_back)
    report = CycleReport(held_back=held_back)
    for partitions_request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(partitions_request.partitions_def_name, list(partitions_request.partition_keys))
        report.new_partitions.extend(partitions_request.partition_keys)
    if report.new_partitions:
        logger.info(f"new EPNs: {', '.join(report.new_partitions)}")
    requests = [r for r in result.run_requests or [] if isinstance(r, dg.RunRequest)]
    repatriations = [r for r in requests if r.job_name == REPATRIATION_JOB]
    alert_requests = [r for r in requests if r.job_name == ALERT_JOB] if alerts else []
    workers = workers or Workers()
    with ThreadPoolExecutor(max_workers=settings.max_tasks, thread_name_prefix="repatriate") as pool:
        for outcomes in pool.map(lambda r: workers.run(path, r, instance), repatriations):
            for outcome in outcomes:
                _log_outcome(logger, outcome)
                report.runs.append(outcome)
    if workers.stopping.is_set():
        return report
    for request in alert_requests:
        for outcome in execute_request(defs, instance, request):
            _log_outcome(logger, outcome)
            report.runs.append(outcome)
    if repatriations and settings.execute:  # a dry-run writes nothing, the report's files included
        refresh_report(defs, instance, logger)
    return report


def refresh_report(defs: dg.Definitions, instance: dg.DagsterInstance, logger: logging.Logger) -> None:
    """Rebuild repatriation_report after a cycle that brought EPNs home, as the daemon's
    repatriation_report_refresh sensor does (mxsync runs without the daemon). The cycle copied
    for real (mxsync --execute whatever config.yml's `execute` says), so the report writes its
    files. A report that cannot be built is logged; it is never the cycle's failure."""
    result = defs.resolve_job_def(REPORT_JOB).execute_in_process(
        instance=instance,
        run_config={"ops": {"repatriation_report": {"config": {"execute": True}}}},
        raise_on_error=False,
    )
    if not result.success:
        logger.warning(f"repatriation report not rebuilt: {step_failure_message(result.all_events) or 'run failed'}")
        return
    [event] = result.get_asset_materialization_events()
    meta = event.step_materialization_data.materialization.metadata
    logger.info(
        f"repatriation report: {meta['epns'].value} EPN(s), {meta['needing_attention'].value} needing "
        f"attention: {meta['html'].value}"
    )


def _log_outcome(logger: logging.Logger, outcome: RunOutcome) -> None:
    what = f"EPN {outcome.partition}" if outcome.partition else outcome.job
    if outcome.success and outcome.not_done_here:
        logger.info(f"{what}: run {outcome.run_id}: {outcome.not_done_here}")
    elif outcome.success:
        logger.info(f"{what}: run {outcome.run_id} succeeded")
    else:
        logger.error(f"{what}: run {outcome.run_id} failed: {outcome.error}")
