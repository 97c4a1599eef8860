"""epn_sensor under a portal fault matrix.

For each fault the tick never raises, skips with a reason that names the
fault (or, for one malformed visit, still requests the good due EPNs), and
once the fault clears and the retry time has come, the due EPN is requested:
none forgotten."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime

import dagster as dg
import pytest

from assyncy_dagster.facts import SensorCursor
from assyncy_dagster.portal import PortalClient, visit_window
from assyncy_dagster.testing.stack import DEMO_EQUIPMENT
from tests.support.faultkit import figure, requested_epns
from tests.support.helpers import ticker

FAST = {"portal-timeout-seconds": 1, "portal-retries": 0}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on leaving: connection refused


def _wrong_passwords() -> list[dict]:
    return [{**e, "password": "not-the-password"} for e in DEMO_EQUIPMENT]


# name -> (how to break, how to mend, words the skip reason must hold)
FAULTS = {
    "http-500": (
        lambda s: s.portal.set_faults(fail_next=1000, status=500, path="visits"),
        lambda s: s.portal.set_faults(fail_next=0),
        ["portal unavailable", "HTTP 500"],
    ),
    "http-502": (
        lambda s: s.portal.set_faults(fail_next=1000, status=502, path="visits"),
        lambda s: s.portal.set_faults(fail_next=0),
        ["portal unavailable", "HTTP 502"],
    ),
    "token-endpoint-500": (
        lambda s: s.portal.set_faults(fail_next=1000, status=500, path="oauth"),
        lambda s: s.portal.set_faults(fail_next=0),
        ["could not authenticate", "HTTP 500"],
    ),
    "timeout": (
        lambda s: s.portal.set_faults(delay_seconds=3, path="visits"),
        lambda s: s.portal.set_faults(delay_seconds=0),
        ["portal unavailable", "no answer within 1 s"],
    ),
    "connection-dropped": (
        lambda s: s.portal.set_faults(down=True),
        lambda s: s.portal.set_faults(down=False),
        ["portal unavailable", "Connection aborted"],
    ),
    "connection-refused": (
        lambda s: s.configure(**{"base-url": f"http://127.0.0.1:{_closed_port()}"}),
        lambda s: s.configure(**{"base-url": s.portal.url}),
        ["portal unavailable", "refused"],
    ),
    "malformed-json": (
        lambda s: s.portal.set_faults(malformed_next=1000, path="visits"),
        lambda s: s.portal.set_faults(malformed_next=0),
        ["portal unavailable", "JSON"],
    ),
    "401-every-token": (
        lambda s: s.configure(equipment=_wrong_passwords()),
        lambda s: s.configure(equipment=DEMO_EQUIPMENT),
        ["portal unavailable", "authentication refused"],
    ),
    "401-on-visits": (
        lambda s: s.portal.set_faults(fail_next=1000, status=401, path="visits"),
        lambda s: s.portal.set_faults(fail_next=0),
        ["portal unavailable", "401"],
    ),
    "past-tick-budget": (
        lambda s: (s.configure(**{"portal-timeout-seconds": 30}), s.portal.set_faults(delay_seconds=30, path="visits")),
        lambda s: s.portal.set_faults(delay_seconds=0),
        ["portal unavailable", "did not answer within 2 s"],
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_portal_fault_skips_the_tick_by_name_and_forgets_nothing(stack, monkeypatch, fault):
    from assyncy_dagster import facts

    monkeypatch.setattr(facts, "REFRESH_BUDGET_SECONDS", 2)  # 40 s in production
    stack.configure(**FAST)
    stack.lay_out("12282a")
    breaks, mends, words = FAULTS[fault]
    breaks(stack)
    tick, state = ticker(stack)
    started = time.monotonic()
    result = tick()  # must not raise
    took = time.monotonic() - started
    assert isinstance(result, dg.SkipReason), result
    message = result.skip_message
    missing = [w for w in words if w.lower() not in message.lower()]
    assert not missing, f"{fault}: skip reason lacks {missing}: {message}"
    assert "trying again at" in message
    assert took < 8, f"{fault}: the tick took {took:.1f} s"
    assert SensorCursor.parse(state["cursor"]).failures == 1

    mends(stack)
    waiting = tick()  # the retry time has not come: still waiting, nothing asked
    assert isinstance(waiting, dg.SkipReason) and "next try at" in waiting.skip_message
    state["cursor"] = SensorCursor(failures=1, retry_at=time.time() - 1).dumps()  # the minute is up
    healed = tick()
    assert requested_epns(healed) == ["12282a"], f"{fault}: the due EPN was forgotten: {healed}"
    reason = message.split("): ", 1)[-1][:160]
    figure(
        f"portal fault {fault}: tick skipped in {took:.1f} s naming it ({reason}); "
        f"after it cleared 1/1 due EPN requested, 0 forgotten"
    )


def test_a_malformed_visit_among_good_ones_holds_back_only_itself(stack, monkeypatch):
    stack.configure(**FAST)
    stack.lay_out("12282a", "13001a", "12282b")
    settings = stack.settings()
    with PortalClient.from_settings(settings) as client:  # equipment 23's answer, as the portal gives it
        visits = [v.to_dict() for v in client.visits(*visit_window(datetime.now(UTC), 60)) if v.equipment_id == 23]
    assert {v["epn"] for v in visits} >= {"12282a", "13001a"}
    broken = 0
    for visit in visits:
        if visit["epn"] == "13001a":
            visit["end_time"] = "yesterday-ish"  # not a time
            broken += 1
    visits.append({"id": 9, "epn": {"nested": "object"}, "start_time": "x"})  # not even a visit
    visits.append("a string, not a visit")
    stack.portal.set_faults(body_next=1, body={"data": {"visits": visits}}, path="equipment/23/visits")
    tick, state = ticker(stack)
    result = tick()
    assert isinstance(result, dg.SensorResult), result
    assert sorted(requested_epns(result)) == ["12282a", "12282b"]
    # The fault is gone at the next refresh: 13001a is requested then.
    state["cursor"] = SensorCursor().dumps()
    healed = tick()
    assert "13001a" in requested_epns(healed)
    figure(
        f"portal fault malformed-visit: {broken + 2} malformed of {len(visits)} visits skipped alone, "
        f"2/2 good due EPNs requested; after the fault 13001a requested, 0 forgotten"
    )
