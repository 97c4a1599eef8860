"""The demo's portal data: a live visit that ends a minute after the start."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from assyncy_dagster.epn import project_for
from assyncy_dagster_demo.demo import DEMO_EPNS, LIVE_EPN, demo_portal_data
from assyncy_dagster_demo.portal_sim import PortalSimulator
from assyncy_dagster_demo.testing.stack import DEMO_CAP_MAP, DEMO_VISITS

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def test_the_demo_portal_adds_a_mapped_visit_that_ends_a_minute_after_the_start():
    demo = PortalSimulator(demo_portal_data(60), now=NOW)
    shared = PortalSimulator(DEMO_VISITS, now=NOW)

    visits = {v.epn: v for e in demo.equipment.values() for v in e.visits}
    assert set(visits) == {v.epn for e in shared.equipment.values() for v in e.visits} | {LIVE_EPN}
    assert visits[LIVE_EPN].start < NOW and visits[LIVE_EPN].end == NOW + timedelta(seconds=60)
    assert project_for(LIVE_EPN, DEMO_CAP_MAP) == "ab12" and LIVE_EPN in DEMO_EPNS
