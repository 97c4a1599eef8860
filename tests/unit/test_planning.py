"""plan_cycle: the rules epn_sensor and mxsync share."""

from datetime import timedelta

from assyncy_dagster.domain import Person, Visit
from assyncy_dagster.outcomes import Outcome
from assyncy_dagster.planning import RunHistory, plan_cycle, retry_delay, visits_hold
from assyncy_dagster_demo.testing.stack import DEMO_CAP_MAP
from tests.support.helpers import NOW, visit_of


def visit_days_ago(epn: str, start_days_ago: float = 5, end_days_ago: float = 4) -> Visit:
    """A visit of `epn` on equipment 23 from `start_days_ago` to `end_days_ago` days before NOW."""
    return visit_of(
        epn,
        Person("Ada", "Lovelace", "ada@example.org"),
        (),
        23,
        start=NOW - timedelta(days=start_days_ago),
        end=NOW - timedelta(days=end_days_ago),
    )


def plan(**overrides):
    facts = {
        "visits": [visit_days_ago("12282a"), visit_days_ago("13001b", 1, -1), visit_days_ago("14500a")],
        "on_sftp": ["12282a", "13001b", "14500a"],
        "known_partitions": [],
        "repatriated": [],
        "alerted": [],
        "epn_cap_map": DEMO_CAP_MAP,
        "now": NOW,
        "dry_run": False,
    }
    return plan_cycle(**(facts | overrides))


def test_new_epns_become_partitions_and_due_ones_are_repatriated():
    result = plan(known_partitions=["12282a"])
    assert result.new_partitions == ["13001b", "14500a"]
    assert result.repatriate == ["12282a"]


def test_running_visit_is_held_back():
    result = plan()
    assert "13001b" not in result.repatriate
    assert "still running" in result.held_back["13001b"]


def test_unmapped_epn_on_the_host_is_alerted_once():
    assert plan().alert == ["14500a"]
    assert plan(alerted=["14500a"]).alert == []
    assert plan(alert_in_flight=["14500a"]).alert == []


def test_an_epn_recorded_in_ignore_yml_is_never_planned_again():
    assert plan(repatriated=["12282a"]).repatriate == []


def test_mapping_edit_makes_an_unmapped_epn_due():
    assert "14500a" not in plan().repatriate
    assert "14500a" in plan(epn_cap_map=DEMO_CAP_MAP | {"14500": "zz01"}).repatriate


def test_epn_without_folder_on_the_host_waits():
    result = plan(on_sftp=["13001b"])
    assert result.repatriate == []
    assert "no folder" in result.held_back["12282a"]


def test_epn_already_queued_is_not_requested_again():
    history = {"12282a": RunHistory(Outcome.RUNNING, "r1")}
    assert plan(history=history).repatriate == []


def test_successful_dry_run_is_not_repeated_but_execute_mode_runs_for_real():
    history = {"12282a": RunHistory(Outcome.HOME, "r1")}
    assert plan(history=history, dry_run=True).repatriate == []
    assert plan(history=history, dry_run=False).repatriate == ["12282a"]


def test_failed_repatriation_waits_with_growing_backoff():
    failed = lambda n, minutes_ago: {  # noqa: E731
        "12282a": RunHistory(Outcome.FAILED, "r1", NOW - timedelta(minutes=minutes_ago), n)
    }
    base = timedelta(minutes=30)
    assert plan(history=failed(1, 10), retry_base=base).repatriate == []
    assert plan(history=failed(1, 31), retry_base=base).repatriate == ["12282a"]
    assert plan(history=failed(3, 100), retry_base=base).repatriate == []  # 3 failures: wait 2 h
    assert "retrying after" in plan(history=failed(3, 100), retry_base=base).held_back["12282a"]
    assert retry_delay(30, base) == timedelta(hours=24)


def test_an_empty_source_folder_is_held_back_with_its_reason_then_looked_at_again():
    def empty(n, minutes_ago):
        return {"12282a": RunHistory(Outcome.EMPTY, "r1", NOW - timedelta(minutes=minutes_ago), n)}

    base = timedelta(minutes=30)
    held = plan(history=empty(1, 10), retry_base=base)
    assert held.repatriate == []
    assert "held no files" in held.held_back["12282a"] and "looking again after" in held.held_back["12282a"]
    assert plan(history=empty(1, 31), retry_base=base).repatriate == ["12282a"]
    assert plan(history=empty(2, 31), retry_base=base).repatriate == []  # the second look waits an hour


def test_hostile_names_never_reach_the_plan():
    result = plan(on_sftp=["12282a", "../x", "1;rm"], visits=[visit_days_ago("12282a")])
    assert result.new_partitions == ["12282a"]


MALFORMED = "equipment 24: visit #2 (id 50199, EPN 12282a): end_time '2026-12-07T09:00:00' lacks a UTC offset"


def test_a_malformed_visit_holds_back_an_epn_whose_other_visits_have_ended_naming_it():
    result = plan(malformed={"12282a": MALFORMED})
    assert "12282a" not in result.repatriate
    assert result.held_back["12282a"].startswith("the portal sent a malformed visit of it")
    assert MALFORMED in result.held_back["12282a"]


def test_a_malformed_visit_holds_back_an_epn_with_no_other_visit():
    result = plan(visits=[], malformed={"12282a": MALFORMED})
    assert result.repatriate == [] and MALFORMED in result.held_back["12282a"]


def test_a_malformed_visit_whose_epn_cannot_be_read_holds_nothing_back_and_is_named():
    result = plan(malformed={"equipment 23 visit #4": "visit #4 is a str, expected an object"})
    assert result.repatriate == ["12282a"]
    assert "visit #4 is a str" in result.held_back["equipment 23 visit #4"]


def test_a_malformed_visit_of_a_recorded_epn_changes_nothing():
    result = plan(repatriated=["12282a"], malformed={"12282a": MALFORMED})
    assert "12282a" not in result.repatriate and "12282a" not in result.held_back


def test_visits_hold_is_none_only_when_every_visit_has_ended_and_none_was_malformed():
    ended, running = visit_days_ago("12282a"), visit_days_ago("12282a", 1, -1)
    assert visits_hold([ended], "", NOW) is None
    assert visits_hold([ended, running], "", NOW).startswith("visit still running (ends ")
    assert MALFORMED in visits_hold([ended], MALFORMED, NOW)
