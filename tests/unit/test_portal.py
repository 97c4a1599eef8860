"""Visits as the portal client hands them on (dicts, times, people, grouping), and a base URL that is
refused before any request."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from assyncy_dagster.domain import Person, Visit, visit_window, visits_by_epn
from assyncy_dagster.portal.client import PortalClient
from assyncy_dagster.portal.errors import PortalError
from tests.support.helpers import equipment_for, last_days


def test_base_url_without_scheme_is_reported_at_once():
    client = PortalClient("portal.example.edu", equipment_for(), retries=3, backoff=10)

    with pytest.raises(PortalError, match=r"base-url in config.yml is not a usable URL"):
        client.visits(*last_days())


# -- pure helpers ----------------------------------------------------------------------


def test_visit_round_trips_through_its_dict():
    visit = Visit(
        id=7,
        epn="12282a",
        start_time=datetime(2026, 11, 1, 9, tzinfo=timezone(timedelta(hours=11))),
        end_time=datetime(2026, 11, 2, 9, tzinfo=timezone(timedelta(hours=11))),
        principal_scientist=Person("Ana & Luis", "Fernández", "lab@anu.edu.au"),
        data_scientists=(Person("Wei", "Zhang", "wei@monash.edu"),),
        equipment_id=24,
    )

    assert Visit.from_dict(visit.to_dict()) == visit
    assert visit.to_dict()["start_time"] == "2026-11-01T09:00:00+11:00"


def test_visit_has_ended_only_once_its_end_time_is_past():
    start = datetime(2026, 11, 1, tzinfo=UTC)
    visit = Visit(1, "12282a", start, start + timedelta(days=1), None)

    assert not visit.has_ended(start + timedelta(hours=23))
    assert visit.has_ended(start + timedelta(days=1))


def test_visit_window_spans_the_day_range_up_to_now():
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)

    assert visit_window(now, 200) == (now - timedelta(days=200), now)


def test_visits_by_epn_groups_visits_of_one_epn():
    start = datetime(2026, 11, 1, tzinfo=UTC)
    a1 = Visit(1, "12282a", start, start, None, equipment_id=23)
    a2 = Visit(2, "12282a", start, start, None, equipment_id=24)
    b = Visit(3, "12282b", start, start, None)

    assert visits_by_epn([a1, b, a2]) == {"12282a": [a1, a2], "12282b": [b]}


def test_person_full_name_skips_empty_parts():
    assert Person("", "Citizen", "c@example.edu").full_name == "Citizen"
