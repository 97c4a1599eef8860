"""portal_visits: what the synchrotron's portal says about one EPN's beamtime."""

from datetime import UTC, datetime

import dagster as dg

from ..domain import Visit, visit_window, visits_by_epn
from ..epn import InvalidEpnError, validate_epn
from ..partitions import epn_partitions
from ..portal.errors import PortalError
from ..resources.portal import PortalResource
from ..resources.settings import AssyncyConfigResource


def _person(person) -> str:
    return f"{person.full_name} <{person.email}>" if person else "(none)"


PORTAL_VISITS = dg.AssetKey("portal_visits")


@dg.asset(
    partitions_def=epn_partitions,
    group_name="repatriation",
    kinds={"python"},
    owners=["team:research-data"],
    tags={"source": "synchrotron-portal"},
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=50),  # as epn_data's, so they share runs
)
def portal_visits(
    context: dg.AssetExecutionContext, portal: PortalResource, assyncy_config: AssyncyConfigResource
) -> dg.MaterializeResult:
    """Who and when: the portal's visit record(s) for this EPN, i.e. when the beamtime
    ran, on which equipment, and who the principal and data scientists are.

    Looked up on every configured equipment within `visit-day-range` days.
    `epn_data` looks the visits up again when it runs, to decide whether each
    visit has ended. In a range (a backfill), EPNs without a visit are named in
    the metadata and fail in `epn_data`.
    """
    try:
        epns = [validate_epn(key) for key in context.partition_keys]
    except InvalidEpnError as exc:
        raise dg.Failure(description=str(exc)) from None
    settings = assyncy_config.settings()
    since, until = visit_window(datetime.now(UTC), settings.visit_day_range)
    try:
        found = visits_by_epn(v for v in portal.visits(since, until, logger=context.log) if v.epn in set(epns))
    except PortalError as exc:
        raise dg.Failure(description=f"portal lookup for EPN(s) {', '.join(epns)} failed: {exc}") from None
    missing = [epn for epn in epns if epn not in found]
    if len(epns) == 1:
        if missing:
            equipment = ", ".join(str(e.id) for e in settings.equipment)
            raise dg.Failure(
                description=(
                    f"EPN {epns[0]}: the portal has no visit for it in the last {settings.visit_day_range} days "
                    f"on equipment {equipment} (check the EPN, or raise visit-day-range in config.yml)"
                )
            )
        return dg.MaterializeResult(metadata=visit_metadata(found[epns[0]]))
    for epn, visits in found.items():
        metadata = visit_metadata(visits)
        context.log.info(f"EPN {epn}: visit {metadata['start'].value} to {metadata['end'].value}")
    return dg.MaterializeResult(
        metadata={
            "epns": dg.MetadataValue.int(len(epns)),
            "epns_without_visit": dg.MetadataValue.text(", ".join(missing) or "none"),
        }
    )


def visit_metadata(visits: list[Visit]) -> dict[str, dg.MetadataValue]:
    first = min(visits, key=lambda v: v.start_time)
    last = max(visits, key=lambda v: v.end_time)
    return {
        "start": dg.MetadataValue.text(first.start_time.isoformat()),
        "end": dg.MetadataValue.text(last.end_time.isoformat()),
        "equipment": dg.MetadataValue.text(", ".join(sorted({str(v.equipment_id) for v in visits}))),
        "principal_scientist": dg.MetadataValue.text(_person(first.principal_scientist)),
        "data_scientists": dg.MetadataValue.int(len({p.email for v in visits for p in v.data_scientists})),
        "visits": dg.MetadataValue.int(len(visits)),
    }
