"""The batch loop: bring several EPNs home one after another in one step's `rsync` slot.

One step may bring many EPNs home (a sensor batch, a UI backfill range, mxsync). Each EPN still gets
its own `epn_data` materialisation and its own `matches_source` result, reported per partition as
soon as that EPN is done (assets/bring_home.py); one EPN's failure is recorded for it alone and the
step goes on with the next one. Before rsync touches an EPN the run takes its exclusive claim
(claims.py), and every EPN's outcome is tagged on the run (run_records.py).
"""

import contextlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from ..claims import WORKER_TAG, Heartbeat, claim_epn, release_epn, this_worker
from ..config import Settings
from ..domain import visit_window, visits_by_epn
from ..epn import InvalidEpnError, validate_epn
from ..portal.errors import PortalError
from ..resources.portal import PortalResource
from ..resources.settings import AssyncyConfigResource
from ..resources.ssh_source import SshSourceResource
from ..run_records import Outcome, home_since_requested, outcome_tags, tagged_epns
from ..state import read_epns
from ..transfer import RsyncError, SshConfigError
from .bring_home import EpnEmpty, EpnFailed, bring_home
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
) -> Iterator[dg.AssetMaterialization | dg.AssetObservation | dg.AssetCheckEvaluation]:
    """Bring `epns` home one after another, in this step's single `rsync` pool slot.

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
    with Heartbeat(instance, run_id, context.log), contextlib.ExitStack() as connection:
        instance.add_run_tags(run_id, {WORKER_TAG: this_worker(), **outcome_tags(epns, Outcome.QUEUED)})
        try:
            since, until = visit_window(datetime.now(UTC), settings.visit_day_range)
            try:
                answer = portal.answer(since, until, logger=context.log)
                by_epn = visits_by_epn(v for v in answer.visits if v.epn in set(epns))
                # The batch's transfers share one ssh connection (transfer/connection.py).
                client = connection.enter_context(sftp.shared_client(logger=context.log))
            except (PortalError, RsyncError, SshConfigError) as exc:  # a settings error names the setting
                instance.add_run_tags(run_id, outcome_tags(epns, Outcome.FAILED))
                raise dg.Failure(description=f"EPN(s) {', '.join(epns)}: cannot start: {exc}") from None

            failures: dict[str, str] = {}
            for epn in epns:
                visits = by_epn.get(epn, [])
                if report_visits and visits:
                    yield dg.AssetMaterialization(
                        asset_key=PORTAL_VISITS, partition=epn, metadata=visit_metadata(visits)
                    )
                why_not = _transferring_elsewhere(instance, epn, run_id, settings, dry_run, context.log)
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
    )


def dry_run_for(settings: Settings, execute: bool | None) -> bool:
    return not (settings.execute if execute is None else execute)
