"""The batch loop: bring several EPNs home one after another in one step's `rsync` slot.

One step may bring many EPNs home (a sensor batch, a UI backfill range, mxsync). Each EPN still gets
its own `epn_data` materialisation and its own `matches_source` result, reported per partition as
soon as that EPN is done (assets/bring_home.py); one EPN's failure is recorded for it alone and the
step goes on with the next one. Before rsync touches an EPN the run takes its exclusive claim
(claims.py), and every EPN's outcome is tagged on the run (run_records.py).
"""

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from ..claims import HEARTBEAT_LIMIT_SECONDS, WORKER_TAG, Heartbeat, batch_held, claim_epn, release_epn, this_worker
from ..config import Settings
from ..domain import visit_window, visits_by_epn
from ..epn import InvalidEpnError, is_valid_epn, validate_epn
from ..names import REPATRIATION_JOB
from ..outcomes import Outcome
from ..portal.errors import PortalError
from ..resources.portal import PortalResource
from ..resources.settings import AssyncyConfigResource
from ..resources.ssh_source import SshSourceResource
from ..run_configs import batch_epns, batch_options
from ..run_records import home_since_requested, outcome_tags, tagged_epns
from ..state import read_epns
from ..transfer import RsyncError, SshConfigError
from .bring_home import EpnEmpty, EpnFailed, bring_home, start_up_heap_set_aside
from .visits import PORTAL_VISITS, visit_metadata


class EpnDataConfig(dg.Config):
    """Per-run choices; the defaults follow config.yml."""

    allow_running_visit: bool = Field(
        default=False,
        description="Sync although the visit has not ended yet (the data may still grow).",
    )
    execute: bool | None = Field(
        default=None,
        description="true copies for real, false is an rsync dry-run; unset follows config.yml's `execute`.",
    )
    full_checksum: bool = Field(
        default=False,
        description="Read every file at both ends (rsync --checksum) so that each one gets a content "
        "checksum in the manifest, also those brought home earlier ('verified by size only'). Costs a "
        "full read of the EPN at the facility and at home.",
    )


def repatriate(
    context,
    epns: Sequence[str],
    *,
    settings: Settings,
    portal: PortalResource,
    sftp: SshSourceResource,
    dry_run: bool,
    allow_running_visit: bool,
    report_visits: bool,
    full_checksum: bool = False,
    take_queued: bool = False,
) -> Iterator[dg.AssetMaterialization | dg.AssetObservation | dg.AssetCheckEvaluation]:
    """Bring `epns` home one after another, in this step's single `rsync` pool slot; with
    `take_queued` (a batch run), then the EPNs of batch runs still waiting in the queue, while
    there are any (see `_take_queued`).

    Yields each EPN's own events as it completes and tags the run with each
    EPN's outcome (see run_records). Raises dg.Failure at the end naming every
    EPN that failed, so the run shows as failed while the others are home."""
    instance, run_id = context.instance, context.run_id
    # Each EPN's outcome is written with the next EPN's `running` tag, one write for both (a tag
    # write costs a database transaction); the last one, and any left when the step ends early,
    # is written in the `finally` below, before the unsettled ones are failed.
    outcomes: dict[str, str] = {}
    # The heartbeat first: every claim's holder has one, and a worker killed outright is noticed
    # by its silence (claims.py). Whatever ends the step, no EPN stays tagged queued or running.
    with start_up_heap_set_aside(), Heartbeat(instance, run_id, context.log), contextlib.ExitStack() as connection:
        taken = _begin(instance, run_id, epns, batch=take_queued)
        if taken:
            epns = [epn for epn in epns if epn not in taken]
            context.log.info(
                f"EPN(s) {', '.join(taken)}: taken by another batch run while this one waited in the queue"
            )
        try:
            since, until = visit_window(datetime.now(UTC), settings.visit_day_range)
            try:
                answer = portal.answer(since, until, logger=context.log)
                by_epn = visits_by_epn(answer.visits)  # EPNs taken from queued runs too
                # A batch's transfers share one ssh connection (transfer/connection.py); one EPN
                # alone (a CLI or UI materialisation of one partition) has nothing to share it with.
                client = (
                    connection.enter_context(sftp.shared_client(logger=context.log))
                    if len(epns) > 1 or take_queued
                    else sftp.client(logger=context.log)
                )
            except (PortalError, RsyncError, SshConfigError) as exc:  # a settings error names the setting
                instance.add_run_tags(run_id, outcome_tags(epns, Outcome.FAILED))
                raise dg.Failure(description=f"EPN(s) {', '.join(epns)}: cannot start: {exc}") from None

            failures: dict[str, str] = {}
            seen: set[str] = set()
            queued = _take_queued(instance, run_id, settings, dry_run, seen, context.log) if take_queued else iter(())
            for epn in itertools.chain(epns, queued):
                seen.add(epn)
                visits = by_epn.get(epn, [])
                if report_visits and visits:
                    yield dg.AssetMaterialization(
                        asset_key=PORTAL_VISITS, partition=epn, metadata=visit_metadata(visits)
                    )
                why_not = epn in epns and _transferring_elsewhere(instance, epn, run_id, settings, dry_run, context.log)
                if why_not:
                    # Not this EPN's failure, and no second rsync into the same destination.
                    context.log.warning(f"EPN {epn}: not started: {why_not}")
                    outcomes.update(outcome_tags([epn], Outcome.SKIPPED))
                    continue
                try:
                    instance.add_run_tags(run_id, {**outcomes, **outcome_tags([epn], Outcome.RUNNING)})
                    outcomes.clear()
                    yield from bring_home(
                        context,
                        epn,
                        settings,
                        client,
                        visits,
                        dry_run=dry_run,
                        allow_running_visit=allow_running_visit,
                        malformed=answer.malformed.get(epn, ""),
                        full_checksum=full_checksum,
                    )
                except EpnFailed as exc:
                    failures[epn] = str(exc)
                    context.log.error(str(exc))
                    outcomes.update(outcome_tags([epn], Outcome.FAILED))
                    continue
                except (SshConfigError, OSError) as exc:  # a setting (key-file, known-hosts-file) or the destination
                    failures[epn] = f"EPN {epn}: {_named_cause(exc)}"
                    context.log.error(failures[epn])
                    outcomes.update(outcome_tags([epn], Outcome.FAILED))
                    continue
                except EpnEmpty as exc:
                    context.log.warning(str(exc))
                    outcomes.update(outcome_tags([epn], Outcome.EMPTY))
                    continue
                finally:
                    release_epn(instance, epn, run_id)
                outcomes.update(outcome_tags([epn], Outcome.DRY_RUN if dry_run else Outcome.HOME))
            if outcomes:
                instance.add_run_tags(run_id, outcomes)
                outcomes.clear()
            if failures:
                if len(epns) == 1:
                    description = next(iter(failures.values()))
                else:
                    description = f"{len(failures)} of {len(epns)} EPN(s) failed; the others are home.\n" + "\n".join(
                        failures.values()
                    )
                raise dg.Failure(description=description, metadata={"errors": dg.MetadataValue.json(failures)})
        finally:
            if outcomes:
                instance.add_run_tags(run_id, outcomes)
            _fail_unsettled(instance, run_id)


# A batch run in these states whose step has not begun is waiting: QUEUED for the run queue (an instance
# with `concurrency: pools:` holds back runs that would find the `rsync` pool full), or started and waiting
# for a pool slot inside the run (Dagster's default instance starts them at once).
_WAITING = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


# How long a run waits for the claim on a waiting batch's EPN list (held by another run for a
# few statements) before it leaves that EPN to the batch; and how long a batch run starting its
# step waits, which covers a taker killed while holding it (its claim expires with its heartbeat).
TAKE_WAIT_SECONDS = 1.0
BEGIN_WAIT_SECONDS = HEARTBEAT_LIMIT_SECONDS + 10.0


def _take_queued(
    instance: dg.DagsterInstance, run_id: str, settings: Settings, dry_run: bool, seen: set[str], log
) -> Iterator[str]:
    """The EPNs this run takes from batch runs still waiting (`_WAITING`) once its own are done, one at a time.

    A run whose batch is done would end, and the next batch would wait for the queue's next
    look and a new run's start-up (seconds each); instead this run goes on in its `rsync` slot,
    so `max-tasks` runs keep `max-tasks` transfers going while EPNs are waiting. Only from runs
    with the same choices (`execute`, ...), newest run first and each one's EPNs from the end
    (where that run, if it starts, would come last). Each EPN is first tagged `skipped` on the run
    it is taken from, unless that run's step has begun (`_took_from`; that run leaves it out when
    it starts, `_begin`), then claimed (claims.py): of two runs reaching for one EPN, one
    transfers it. An EPN that is claimed elsewhere or already recorded is passed over."""
    run = instance.get_run_by_id(run_id)
    options = batch_options(run.run_config if run else None)
    while True:
        found = None
        for waiting in instance.get_runs(dg.RunsFilter(job_name=REPATRIATION_JOB, statuses=_WAITING)):
            # A run whose step has begun (it tags its worker first) works through its own batch.
            if waiting.run_id == run_id or WORKER_TAG in waiting.tags or batch_options(waiting.run_config) != options:
                continue
            left = tagged_epns(waiting.tags)
            for epn in reversed(batch_epns(waiting.run_config)):
                if epn not in seen and is_valid_epn(epn) and left.get(epn) == Outcome.QUEUED.value:
                    found = (epn, waiting.run_id)
                    break
            if found:
                break
        if found is None:
            return
        epn, waiting_id = found
        seen.add(epn)
        if not _took_from(instance, waiting_id, epn, run_id):
            continue
        if claim_epn(instance, epn, run_id, log) is not None:
            continue
        if not dry_run and epn in read_epns(settings.ignore):
            release_epn(instance, epn, run_id)
            continue
        yield epn


def _took_from(instance: dg.DagsterInstance, waiting_id: str, epn: str, run_id: str) -> bool:
    """Tag `epn` `skipped` on waiting batch run `waiting_id` for this run to bring home, if that
    run's step has not begun and the EPN is still queued there: True when this run took it."""
    with batch_held(instance, waiting_id, run_id, wait=TAKE_WAIT_SECONDS) as held:
        waiting = instance.get_run_by_id(waiting_id) if held else None
        if waiting is None or waiting.status not in _WAITING or WORKER_TAG in waiting.tags:
            return False
        if tagged_epns(waiting.tags).get(epn) != Outcome.QUEUED.value:
            return False
        instance.add_run_tags(waiting_id, outcome_tags([epn], Outcome.SKIPPED))
        return True


def _begin(instance: dg.DagsterInstance, run_id: str, epns: Sequence[str], *, batch: bool) -> list[str]:
    """Tag this run's worker and its EPNs `queued`: its step has begun. Returns the EPNs of its
    batch that another batch run took (`_took_from`) while this one waited in the queue; with
    the batch's claim held, so that each EPN is taken by that run or kept by this one."""
    # Not had within BEGIN_WAIT_SECONDS (a database too busy to answer): it begins anyway; a run
    # that took one of its EPNs then finds it claimed, or recorded, when it comes to it.
    with batch_held(instance, run_id, run_id, wait=BEGIN_WAIT_SECONDS) if batch else contextlib.nullcontext():
        run = instance.get_run_by_id(run_id) if batch else None
        tags = tagged_epns(run.tags if run else {})
        taken = [epn for epn in epns if tags.get(epn) == Outcome.SKIPPED.value]
        kept = [epn for epn in epns if epn not in taken]
        instance.add_run_tags(run_id, {WORKER_TAG: this_worker(), **outcome_tags(kept, Outcome.QUEUED)})
    return taken


def _transferring_elsewhere(
    instance: dg.DagsterInstance, epn: str, run_id: str, settings: Settings, dry_run: bool, log
) -> str | None:
    """Take this run's exclusive claim on the EPN (claims.py) before any rsync into it, or say
    why not: another run holds it (e.g. one launched from the UI while a sensor batch waited; two
    rsyncs into one destination must never run at once, on one host or on many), or another run
    brought it home after this one was requested. The caller gives the claim back."""
    holder = claim_epn(instance, epn, run_id, log)
    if holder is not None:
        return f"run {holder} is transferring it right now"
    done = None if dry_run or epn not in read_epns(settings.ignore) else home_since_requested(instance, epn, run_id)
    if done is not None:
        release_epn(instance, epn, run_id)
        return f"run {done} brought it home after this run was requested"
    return None


def _named_cause(exc: OSError | SshConfigError) -> str:
    """An OSError names the path and what failed; the admin is told where to look."""
    if isinstance(exc, SshConfigError):
        return str(exc)
    return f"{exc.strerror or exc} ({exc.filename or 'no file named'}): check destination-root-path and its permissions"


def _fail_unsettled(instance: dg.DagsterInstance, run_id: str) -> None:
    """Tag `failed` every EPN of the run still `queued` or `running` when the step ends (an error
    no EPN's handling caught, an interruption): none stays in flight after its run."""
    run = instance.get_run_by_id(run_id)
    left = [
        e for e, o in tagged_epns(run.tags if run else {}).items() if o in (Outcome.QUEUED.value, Outcome.RUNNING.value)
    ]
    if left:
        instance.add_run_tags(run_id, outcome_tags(left, Outcome.FAILED))


def repatriate_as_configured(
    context,
    epns: Sequence[str],
    config: EpnDataConfig,
    portal: PortalResource,
    sftp: SshSourceResource,
    assyncy_config: AssyncyConfigResource,
    *,
    report_visits: bool,
    take_queued: bool = False,
) -> Iterator[dg.AssetMaterialization | dg.AssetObservation | dg.AssetCheckEvaluation]:
    """`repatriate` with the run's choices (EpnDataConfig), after checking every EPN name:
    a partition key or a run-config entry reaches paths and commands."""
    try:
        checked = list(dict.fromkeys(validate_epn(epn) for epn in epns))
    except InvalidEpnError as exc:
        raise dg.Failure(description=str(exc)) from None
    settings = assyncy_config.settings()
    yield from repatriate(
        context,
        checked,
        settings=settings,
        portal=portal,
        sftp=sftp,
        dry_run=dry_run_for(settings, config.execute),
        allow_running_visit=config.allow_running_visit,
        report_visits=report_visits,
        full_checksum=config.full_checksum,
        take_queued=take_queued,
    )


def dry_run_for(settings: Settings, execute: bool | None) -> bool:
    return not (settings.execute if execute is None else execute)
