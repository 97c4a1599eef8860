"""The portal simulator's data: relative and absolute times, data-file mistakes named, generated visits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from assyncy_dagster.epn import base_number, is_valid_epn
from assyncy_dagster_demo.portal_sim import (
    PortalSimulator,
    SimulatorDataError,
    resolve_time,
)
from tests.support.helpers import PORTAL_DATA, benchmark_module, portal_data_copy

generate_visits = benchmark_module("visit_data").generate_visits  # many visits, as the benchmarks use

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone(timedelta(hours=11)))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("now", NOW),
        ("now-3d", NOW - timedelta(days=3)),
        ("now+2h", NOW + timedelta(hours=2)),
        ("now-90m", NOW - timedelta(minutes=90)),
        ("now-1d+6h", NOW - timedelta(hours=18)),
        ("now-1w", NOW - timedelta(weeks=1)),
        ("2026-11-01T09:00:00+11:00", datetime(2026, 11, 1, 9, tzinfo=timezone(timedelta(hours=11)))),
        ("2026-11-01T09:00:00", None),
        ("yesterday", None),
        ("now-3x", None),
    ],
)
def test_resolve_time_reads_relative_and_absolute_times(text, expected):
    assert resolve_time(text, NOW) == expected


def test_relative_times_count_elapsed_time_across_daylight_saving():
    from zoneinfo import ZoneInfo

    melbourne_summer = datetime(2026, 10, 10, 12, tzinfo=ZoneInfo("Australia/Melbourne"))  # DST began 4 Oct

    moment = resolve_time("now-7d", melbourne_summer)

    # In UTC: Python subtracts two times of one zone as wall-clock times.
    assert melbourne_summer.astimezone(UTC) - moment.astimezone(UTC) == timedelta(days=7)
    assert moment.isoformat() == "2026-10-03T11:00:00+10:00"


# -- data files ------------------------------------------------------------------------------


def test_data_file_mistakes_name_the_entry():
    data = portal_data_copy()
    data["equipment"][1]["visits"][0]["start_time"] = "now-3x"

    with pytest.raises(SimulatorDataError, match=r"equipment\[1\]\.visits\[0\]\.start_time: 'now-3x'"):
        PortalSimulator(data)


def test_data_file_without_equipment_is_refused(tmp_path):
    path = tmp_path / "visits.yml"
    path.write_text("visits: []\n")

    with pytest.raises(SimulatorDataError, match=r"visits.yml: 'equipment' must be a non-empty list"):
        PortalSimulator(path)


def test_json_data_file_is_read(tmp_path):
    import json

    path = tmp_path / "visits.json"
    path.write_text(json.dumps(PORTAL_DATA))

    assert len(PortalSimulator(path).equipment[24].visits) == 2


def test_generated_visits_have_unique_valid_epns_over_the_equipment():
    data = generate_visits(1000, (23, 24, 25))
    epns = [v["epn"] for e in data["equipment"] for v in e["visits"]]

    assert len(epns) == len(set(epns)) == 1000
    assert all(is_valid_epn(epn) for epn in epns)
    assert [len(e["visits"]) for e in data["equipment"]] == [334, 333, 333]
    assert len({base_number(epn) for epn in epns}) == 250


def test_generated_visits_with_now_use_absolute_times():
    data = generate_visits(3, seed=1, now=NOW)

    assert datetime.fromisoformat(data["equipment"][0]["visits"][0]["start_time"]) < NOW
