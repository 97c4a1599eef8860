"""A malformed visit holds its EPN back everywhere it could be let through (issue 17, item 3).

13001a has two visits in the portal simulator: 50117 on equipment 23, ended 13 days ago
and well formed, and 50199 on equipment 24, begun an hour ago and running until tomorrow,
whose end time lacks a UTC offset. From the good visit alone 13001a looks ended; it is not,
and an EPN synced and recorded now would never fetch the rest of its data. The sensor (and
so mxsync, which plans with it), `epn_data` run from the UI or the CLI, and the report must
each hold it back and name the malformed visit."""

import csv
import logging
from datetime import UTC, datetime, timedelta

import dagster as dg

from assyncy_dagster.assets.report import repatriation_report
from assyncy_dagster.definitions import build_resources
from assyncy_dagster.domain import visit_window
from assyncy_dagster.facts import SensorCursor
from assyncy_dagster.portal.client import PortalClient
from assyncy_dagster.resources.portal import PortalResource
from assyncy_dagster.resources.ssh_source import SshSourceResource
from assyncy_dagster.tick import plan_tick
from tests.support.faultkit import requested_epns
from tests.support.helpers import failure_text, files_under, ticker

MALFORMED_ID = 50199


def serve_a_running_visit_without_utc_offset(stack, epn: str = "13001a") -> str:
    """Equipment 24 answers, from now on, with its visits plus a running visit of `epn` whose
    end time has no UTC offset; returns that end time as the portal sends it."""
    with PortalClient.from_settings(stack.settings()) as client:
        visits = [v.to_dict() for v in client.visits(*visit_window(datetime.now(UTC), 60)) if v.equipment_id == 24]
    now = datetime.now(UTC).replace(microsecond=0)
    end = (now + timedelta(days=1)).replace(tzinfo=None).isoformat()  # no "+00:00"
    visits.append(
        {
            "id": MALFORMED_ID,
            "epn": epn,
            "start_time": (now - timedelta(hours=1)).isoformat(),
            "end_time": end,
            "principal_scientist": None,
            "data_scientists": [],
        }
    )
    stack.portal.set_faults(body_next=1000, body={"data": {"visits": visits}}, path="equipment/24/visits")
    return end


def names_the_malformed_visit(text: str, end: str) -> bool:
    return all(words in text for words in (f"id {MALFORMED_ID}", "equipment 24", repr(end), "UTC offset"))


def test_the_sensor_holds_back_an_epn_with_a_malformed_visit_and_names_it(stack):
    stack.lay_out("12282a", "13001a")
    end = serve_a_running_visit_without_utc_offset(stack)
    tick, state = ticker(stack)

    result = tick()

    assert isinstance(result, dg.SensorResult), result
    assert requested_epns(result) == ["12282a"], "13001a looks ended from its good visit alone, but is not"
    plan, _ = plan_tick(
        stack.instance,
        stack.settings(),
        PortalResource(),
        SshSourceResource(),
        logging.getLogger("test"),
        SensorCursor.parse(state["cursor"]),
    )
    assert plan is not None and "13001a" not in plan.repatriate
    why = plan.held_back["13001a"]
    assert why.startswith("the portal sent a malformed visit of it"), why
    assert names_the_malformed_visit(why, end), why


def test_epn_data_from_the_ui_or_cli_refuses_an_epn_with_a_malformed_visit_and_copies_nothing(stack):
    stack.lay_out("13001a")
    end = serve_a_running_visit_without_utc_offset(stack)

    result = stack.materialize("13001a")

    assert not result.success
    message = failure_text(result)
    assert message.startswith("EPN 13001a: the portal sent a malformed visit of it"), message
    assert names_the_malformed_visit(message, end), message
    materialised = [e.event_specific_data.materialization.asset_key for e in result.get_asset_materialization_events()]
    assert dg.AssetKey("epn_data") not in materialised
    assert stack.ignored() == []
    assert not files_under(stack.destination_root), "nothing may be copied"


def test_the_report_shows_an_epn_with_a_malformed_visit_as_waiting_naming_the_visit(stack):
    stack.lay_out("12282a", "13001a")
    end = serve_a_running_visit_without_utc_offset(stack)

    result = dg.materialize([repatriation_report], instance=stack.instance, resources=build_resources())

    assert result.success
    [event] = result.get_asset_materialization_events()
    metadata = event.event_specific_data.materialization.metadata
    with open(metadata["csv"].value, newline="") as handle:
        rows = {row["epn"]: row for row in csv.DictReader(handle)}
    row = rows["13001a"]
    assert row["state"] == "waiting", row
    assert row["detail"].startswith("the portal sent a malformed visit of it"), row
    assert names_the_malformed_visit(row["detail"], end), row
    assert rows["12282a"]["state"] == "waiting" and "not synced yet" in rows["12282a"]["detail"]
