"""One tick of the watch: what the runs say, the plan, and the runs to ask for.

`plan_tick` is shared by `epn_sensor` and `run_cycle` (mxsync, the demo): it
ends runs whose worker died, gathers the facts (facts.py), decides with
`planning.plan_cycle`, and phrases the decision as a sensor result: new EPN
partitions, repatriation batches and an unknown-EPN alert, each with a run key
so that a re-evaluated tick cannot launch the same run twice.
"""

import hashlib
import math
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

from .canary import due_reasons, record_due
from .claims import claim_holder_gone, claims
from .config import Settings
from .epn import is_mapped_epn
from .facts import FACTS_FILE, SensorCursor, due_for_resync, gather_facts, look_for_new_data, save_facts
from .names import ALERT_JOB, KIND_TAG, REPATRIATION_JOB, RSYNC_POOL
from .outcomes import Outcome
from .partitions import EPN_PARTITIONS_NAME, epn_partitions
from .planning import CyclePlan, RunHistory, plan_cycle
from .refresh_failures import refresh_failure_file
from .resources.portal import PortalResource
from .resources.ssh_source import SshSourceResource
from .run_configs import alert_epns, alert_run_config, batch_run_config
from .run_records import IN_FLIGHT, InFlight, end_lost_runs, epn_history, in_flight, outcome_tags
from .state import ALERTED_KEY, read_epns

_FAILED_RUN = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def sync_pool_limit(instance: dg.DagsterInstance, max_tasks: int) -> None:
    """Make the `rsync` pool allow `max-tasks` transfers at once, as the old tool's threads did."""
    storage = instance.event_log_storage
    if storage.get_concurrency_info(RSYNC_POOL).slot_count != max_tasks:
        storage.set_concurrency_slots(RSYNC_POOL, max_tasks)


# -- what the runs say ---------------------------------------------------------------


def alert_state(instance: dg.DagsterInstance) -> tuple[set[str], str]:
    """EPNs in alert runs still queued or running, and the id of the last failed alert run."""
    in_flight: set[str] = set()
    for run in instance.get_runs(dg.RunsFilter(job_name=ALERT_JOB, statuses=list(IN_FLIGHT))):
        in_flight.update(alert_epns(run.run_config))
    failed = instance.get_runs(dg.RunsFilter(job_name=ALERT_JOB, statuses=list(_FAILED_RUN)), limit=1)
    return in_flight, failed[0].run_id if failed else "none"


def repatriation_history(
    instance: dg.DagsterInstance, candidates: Iterable[str], flights: InFlight
) -> dict[str, RunHistory]:
    """Each candidate EPN's repatriation state: in flight (any run: sensor, mxsync, UI, CLI; or
    claimed by a run that was ended from outside while its step may still be writing: see
    claims.claim_holder_gone), or its latest ended attempt and its run of failures."""
    candidates = list(candidates)
    claimed = claims(instance, (e for e in candidates if e not in flights.epns))
    history: dict[str, RunHistory] = {}
    for epn in candidates:
        if epn in flights.epns:
            history[epn] = RunHistory(Outcome.RUNNING, flights.epns[epn])
            continue
        holder = claimed.get(epn)
        if holder is not None and claim_holder_gone(instance, holder) is None:
            history[epn] = RunHistory(Outcome.RUNNING, holder)  # a retry now would only find it claimed
            continue
        found = epn_history(instance, epn)
        if found is not None:
            history[epn] = found
    return history


def plan_tick(
    instance: dg.DagsterInstance,
    settings: Settings,
    portal: PortalResource,
    sftp: SshSourceResource,
    log,
    cursor: SensorCursor | None = None,
) -> tuple[CyclePlan | None, dg.SensorResult | dg.SkipReason]:
    """Gather the facts, decide with `plan_cycle`, and phrase the decision as the
    sensor's result. Shared by `epn_sensor` and `run_cycle` (mxsync, the demo).

    With a `cursor` (the sensor), the portal and host are asked only when a
    refresh is due and their last answers are reused in between; `cursor` is
    updated in place."""
    now = datetime.now(UTC)
    tick_started = time.monotonic()
    partitions = instance.get_dynamic_partitions(EPN_PARTITIONS_NAME)
    flights = in_flight(instance, REPATRIATION_JOB, partitions)
    lost = end_lost_runs(instance, flights, settings.stale_run_hours, now, log=log)
    lost_text = "".join(f"; ended run {run_id} as failed: {why}" for run_id, why in lost.items())
    for run_id, why in lost.items():
        log.warning(f"epn_sensor: ended run {run_id} as failed: {why}; its EPNs will be retried")
    if lost:
        flights = in_flight(instance, REPATRIATION_JOB, partitions)

    cache_file = Path(instance.storage_directory()) / FACTS_FILE if cursor is not None else None
    facts, skipped = gather_facts(settings, portal, sftp, log, cursor, now, cache_file, refresh_failure_file(instance))
    if facts is None:
        return None, dg.SkipReason(f"{skipped}{lost_text}")
    repatriated = read_epns(settings.ignore)  # a StateFileError names the file: the sensor skips, mxsync stops
    alerted = read_epns(settings.alerted_path, key=ALERTED_KEY)

    sync_pool_limit(instance, settings.max_tasks)
    dry_run = not settings.execute
    alert_in_flight, last_failed_alert = alert_state(instance)
    if facts.refreshed_at == now.timestamp():  # refreshed this tick (always, for mxsync)
        look_for_new_data(instance, settings, sftp, log, facts, set(repatriated), now, tick_started)
        if cache_file is not None:
            save_facts(cache_file, facts)
    resync = due_for_resync(instance, facts) if facts.changed else {}
    # A recorded EPN whose source changed is due again, under the usual rules (backoff, in flight).
    repatriated_set = {e for e in repatriated if e not in resync}
    candidates = {e for e in facts.on_sftp if e not in repatriated_set and is_mapped_epn(e, settings.epn_cap_map)}
    history = repatriation_history(instance, candidates, flights)
    plan = plan_cycle(
        visits=facts.visits,
        on_sftp=facts.on_sftp,
        known_partitions=partitions,
        repatriated=repatriated_set,
        alerted=alerted,
        epn_cap_map=settings.epn_cap_map,
        now=now,
        dry_run=dry_run,
        history=history,
        alert_in_flight=alert_in_flight,
        retry_base=timedelta(minutes=settings.retry_backoff_minutes),
        malformed=facts.rejected,
    )
    for epn in sorted(e for e in flights.epns if e in candidates):
        plan.in_flight.append(epn)
    plan.changed = {epn: why for epn, why in resync.items() if epn in plan.repatriate}
    # The stuck canary's clock, only from fresh facts (a failed refresh above keeps it as it was).
    record_due(
        instance,
        due_reasons(plan, facts.visits, facts.on_sftp, repatriated_set | set(resync), settings.epn_cap_map, now),
        now,
    )
    if not (plan.repatriate or plan.alert or plan.new_partitions):
        return plan, dg.SkipReason(f"nothing to do: {plan.summary()}{held_text(plan.held_back)}{lost_text}")
    log.info(f"epn_sensor: {plan.summary()}{held_text(plan.held_back)}{lost_text}")
    new_partitions = [epn_partitions.build_add_request(plan.new_partitions)] if plan.new_partitions else []
    batches = plan_batches(plan.repatriate, settings.max_tasks, settings.max_epns_per_run)
    return plan, dg.SensorResult(
        run_requests=repatriation_requests(batches, dry_run, history) + alert_requests(plan.alert, last_failed_alert),
        dynamic_partitions_requests=new_partitions,
    )


# -- the runs to ask for -------------------------------------------------------------


def held_text(held: Mapping[str, str], limit: int = 10) -> str:
    """The held-back EPNs and why (the first `limit`), to end a log line or a skip reason."""
    if not held:
        return ""
    shown = "; ".join(f"{epn}: {why}" for epn, why in list(held.items())[:limit])
    more = f"; and {len(held) - limit} more" if len(held) > limit else ""
    return f" (held back: {shown}{more})"


def plan_batches(epns: list[str], max_tasks: int, per_run: int) -> list[list[str]]:
    """Share the due EPNs out over runs: at least `max-tasks` runs when there are enough
    EPNs (so every rsync slot has work), at most `max-epns-per-run` EPNs in each."""
    if not epns:
        return []
    size = max(1, min(per_run, math.ceil(len(epns) / max_tasks)))
    return [epns[i : i + size] for i in range(0, len(epns), size)]


def _digest(items: Iterable[str]) -> str:
    return hashlib.sha256(",".join(sorted(items)).encode()).hexdigest()[:16]


def repatriation_requests(
    batches: list[list[str]], dry_run: bool, history: Mapping[str, RunHistory]
) -> list[dg.RunRequest]:
    mode = "dry-run" if dry_run else "execute"
    requests = []
    for batch in batches:
        # The key changes only when one of its EPNs' run history does: a re-evaluated
        # tick cannot launch the same batch twice, and a retry after a failure gets a new key.
        attempts = [f"{epn}@{history[epn].run_id if epn in history else 'first'}" for epn in batch]
        requests.append(
            dg.RunRequest(
                run_key=f"repatriate:{mode}:{_digest(attempts)}",
                job_name=REPATRIATION_JOB,
                # The mode is decided here, with the plan (mxsync --execute overrides config.yml's `execute`).
                run_config=batch_run_config(batch, execute=not dry_run),
                tags={
                    KIND_TAG: "repatriation",
                    "assyncy/mode": mode,
                    "assyncy/epn_count": str(len(batch)),
                    **outcome_tags(batch, Outcome.QUEUED),
                },
            )
        )
    return requests


def alert_requests(epns: list[str], last_failed_alert: str) -> list[dg.RunRequest]:
    if not epns:
        return []
    return [
        dg.RunRequest(
            run_key=f"alert:{_digest(epns)}:{last_failed_alert}",
            job_name=ALERT_JOB,
            run_config=alert_run_config(epns),
            tags={KIND_TAG: "alert", "assyncy/epn_count": str(len(epns))},
        )
    ]
