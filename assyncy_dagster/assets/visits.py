"""portal_visits: what the synchrotron's portal says about one EPN's beamtime."""

from datetime import datetime, timezone

import dagster as dg

from ..epn import InvalidEpnError, validate_epn
from ..partitions import epn_partitions
from ..portal import PortalError, Visit, visit_window
from ..resources.portal import PortalResource
from ..resources.settings import AssyncyConfigResource


def partition_epn(context: dg.AssetExecutionContext) -> str:
    """The run's EPN, checked: a partition key reaches paths and commands."""
    try:
        return validate_epn(context.partition_key)
    except InvalidEpnError as exc:
        raise dg.Failure(description=str(exc)) from None


def _person(person) -> str:
    return f"{person.full_name} <{person.email}>" if person else "(none)"


@dg.asset(partitions_def=epn_partitions, group_name="repatriation", kinds={"python"})
def portal_visits(
    context: dg.AssetExecutionContext, portal: PortalResource, assyncy_config: AssyncyConfigResource
) -> dg.Output[list[dict]]:
    """The portal's visit record(s) for this EPN: when the beamtime ran, on which
    equipment, and who the principal and data scientists are.

    Looked up on every configured equipment within `visit-day-range` days.
    `epn_data` reads it to decide whether the visit has ended.
    """
    epn = partition_epn(context)
    settings = assyncy_config.settings()
    since, until = visit_window(datetime.now(timezone.utc), settings.visit_day_range)
    try:
        visits = [v for v in portal.visits(since, until, logger=context.log) if v.epn == epn]
    except PortalError as exc:
        raise dg.Failure(description=f"portal lookup for EPN {epn} failed: {exc}") from None
    if not visits:
        equipment = ", ".join(str(e.id) for e in settings.equipment)
        raise dg.Failure(
            description=(
                f"EPN {epn}: the portal has no visit for it in the last {settings.visit_day_range} days "
                f"on equipment {equipment} (check the EPN, or raise visit-day-range in config.yml)"
            )
        )
    return dg.Output([v.to_dict() for v in visits], metadata=visit_metadata(visits))


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
