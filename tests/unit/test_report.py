"""The repatriation report's rules: each EPN's state from its facts alone (no servers, no Dagster)."""

import re
from datetime import UTC, date, datetime, timedelta

from assyncy_dagster.outcomes import Outcome
from assyncy_dagster.report import (
    MEANING,
    EpnFacts,
    Holding,
    State,
    Verified,
    attention_order,
    backlog_by_day,
    bytes_by_week,
    counts_by_state,
    decide,
    repair_selection,
    report_row,
)
from tests.support.helpers import REPO

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
SYNCED = (NOW - timedelta(days=2)).timestamp()
HOME = Verified(timestamp=SYNCED, source_files=5, source_bytes=5000)


def facts(**overrides) -> EpnFacts:
    """A mapped EPN whose visit ended yesterday and whose folder is on the host: due, not synced."""
    values = {
        "epn": "12282a",
        "project": "ny79",
        "visit_start": NOW - timedelta(days=2),
        "visit_end": NOW - timedelta(days=1),
        "on_host": True,
    }
    return EpnFacts(**(values | overrides))


def recorded(**overrides) -> EpnFacts:
    """Recorded in ignore.yml after a verified sync of 5 files, 5000 bytes, all still at the destination."""
    return facts(**({"recorded": True, "verified": HOME, "destination": Holding(5, 5000)} | overrides))


def state_of(epn_facts: EpnFacts) -> State:
    return decide(epn_facts, NOW).state


def test_visit_not_ended_is_running():
    decision = decide(facts(visit_end=NOW + timedelta(hours=3)), NOW)
    assert decision.state is State.RUNNING
    assert "visit ends 2026-11-20T15:00" in decision.detail


def test_ended_visit_not_synced_yet_is_waiting():
    decision = decide(facts(), NOW)
    assert decision.state is State.WAITING
    assert "not synced yet" in decision.detail


def test_epn_in_transfer_is_waiting_and_names_the_run():
    decision = decide(facts(attempt=Outcome.RUNNING, run_id="abcdef0123456789"), NOW)
    assert decision.state is State.WAITING
    assert "in transfer (run abcdef01)" in decision.detail


def test_empty_source_folder_is_waiting_held_back_not_failed():
    decision = decide(facts(attempt=Outcome.EMPTY), NOW)
    assert decision.state is State.WAITING
    assert "held no files" in decision.detail


def test_epn_on_the_host_without_a_visit_is_waiting_held_back():
    decision = decide(facts(visit_start=None, visit_end=None), NOW)
    assert decision.state is State.WAITING
    assert "no visit in the portal" in decision.detail


def test_verified_and_recorded_with_everything_at_the_destination_is_home():
    decision = decide(recorded(), NOW)
    assert decision.state is State.HOME
    assert decision.detail == "verified 2026-11-18T12:00+00:00"


def test_home_with_files_verified_by_size_only_says_so_and_how_to_fill_the_gap():
    decision = decide(recorded(verified=Verified(SYNCED, 5, 5000, by_size_only=2)), NOW)
    assert decision.state is State.HOME
    assert "2 of 5 file(s) verified by size only" in decision.detail and "full_checksum" in decision.detail


def test_more_at_the_destination_than_the_source_counted_is_still_home():
    assert state_of(recorded(destination=Holding(7, 9000))) is State.HOME


def test_recorded_epn_from_the_old_tool_with_its_destination_is_home():
    decision = decide(recorded(verified=None, destination=Holding(3, 10)), NOW)
    assert decision.state is State.HOME
    assert "no verified sync" in decision.detail


def test_recorded_epn_whose_destination_is_missing_is_partial():
    decision = decide(recorded(destination=None), NOW)
    assert decision.state is State.PARTIAL
    assert "destination folder is missing" in decision.detail
    assert "materialise its epn_data partition again" in decision.detail


def test_recorded_epn_with_fewer_files_at_the_destination_is_partial():
    decision = decide(recorded(destination=Holding(4, 4000)), NOW)
    assert decision.state is State.PARTIAL
    assert "holds 4 of 5 file(s) and 4000 of 5000 bytes" in decision.detail


def test_recorded_epn_with_fewer_bytes_at_the_destination_is_partial():
    assert state_of(recorded(destination=Holding(5, 4999))) is State.PARTIAL  # a truncated file


def test_partial_epn_no_longer_on_the_host_says_it_cannot_be_fetched_again():
    decision = decide(recorded(destination=None, on_host=False), NOW)
    assert decision.state is State.PARTIAL
    assert "cannot be fetched again" in decision.detail


def test_partial_wins_over_changed():
    assert (
        state_of(recorded(destination=Holding(1, 10), changed="+3 file(s)", changed_seen_at=SYNCED + 60))
        is State.PARTIAL
    )


def test_recorded_epn_with_files_the_fixity_audit_found_damaged_is_corrupt_and_names_them():
    damaged = (("frames/img_0002.cbf", "corrupt"), ("processing/xds.log", "missing"))
    decision = decide(recorded(damaged=damaged, audited_at=SYNCED + 3600), NOW)
    assert decision.state is State.CORRUPT
    assert "frames/img_0002.cbf (corrupt), processing/xds.log (missing)" in decision.detail
    assert "fixity audit of 2026-11-18T13:00" in decision.detail
    assert "a backfill of its epn_data partition" in decision.detail


def test_corrupt_names_five_files_and_counts_the_rest():
    damaged = tuple((f"frames/img_{i:04d}.cbf", "corrupt") for i in range(8))
    detail = decide(recorded(damaged=damaged), NOW).detail
    assert "found 8 file(s)" in detail and "img_0004.cbf (corrupt) and 3 more" in detail
    assert "img_0005" not in detail


def test_corrupt_wins_over_partial_and_says_when_it_cannot_be_fetched_again():
    damaged = (("frames/img_0002.cbf", "missing"),)
    assert state_of(recorded(damaged=damaged, destination=Holding(4, 4000))) is State.CORRUPT
    assert "cannot be fetched again" in decide(recorded(damaged=damaged, on_host=False), NOW).detail


def test_findings_of_an_epn_not_recorded_are_not_corrupt():
    assert state_of(facts(damaged=(("a", "corrupt"),))) is State.WAITING


def test_source_grown_since_the_verified_sync_is_changed():
    decision = decide(recorded(changed="source changed: +3 file(s), +12000 bytes", changed_seen_at=SYNCED + 60), NOW)
    assert decision.state is State.CHANGED
    assert "+3 file(s)" in decision.detail


def test_change_already_fetched_by_a_later_verified_sync_is_home():
    assert state_of(recorded(changed="+3 file(s)", changed_seen_at=SYNCED - 60)) is State.HOME


def test_unmapped_base_number_is_unmapped_whatever_else_is_known():
    decision = decide(facts(project=None, epn="14500a", attempt=Outcome.FAILED, stuck=True), NOW)
    assert decision.state is State.UNMAPPED
    assert decision.detail == "base number 14500 is not in epn_cap_map"


def test_last_run_failed_is_failed_with_its_error():
    decision = decide(facts(attempt=Outcome.FAILED, error="EPN 12282a: rsync exit 23: permission denied"), NOW)
    assert (decision.state, decision.detail) == (State.FAILED, "EPN 12282a: rsync exit 23: permission denied")


def test_due_longer_than_stuck_after_hours_is_stuck_with_the_underlying_reason():
    due_since = (NOW - timedelta(hours=30)).timestamp()
    decision = decide(facts(attempt=Outcome.FAILED, error="host key changed", due_since=due_since, stuck=True), NOW)
    assert decision.state is State.STUCK
    assert decision.detail == "due since 2026-11-19T06:00+00:00: failed: host key changed"


def test_stuck_does_not_apply_once_the_epn_is_home():
    assert state_of(recorded(stuck=True)) is State.HOME


def test_ended_visit_without_a_folder_on_the_host_is_not_on_host():
    decision = decide(facts(on_host=False), NOW)
    assert decision.state is State.NOT_ON_HOST
    assert "no folder on the SFTP host" in decision.detail


def test_epn_found_only_at_the_destination_is_not_on_host():
    decision = decide(facts(visit_start=None, visit_end=None, on_host=False, destination=Holding()), NOW)
    assert decision.state is State.NOT_ON_HOST
    assert "only at the destination" in decision.detail


def test_host_that_could_not_be_listed_is_never_called_not_on_host():
    decision = decide(facts(on_host=None), NOW)
    assert decision.state is State.WAITING
    assert "could not be listed" in decision.detail


def test_only_a_dry_run_has_seen_it_is_dry_run_only():
    decision = decide(facts(attempt=Outcome.DRY_RUN), NOW)
    assert decision.state is State.DRY_RUN_ONLY
    assert "nothing copied" in decision.detail


def test_every_state_has_a_rule():
    examples = [
        facts(visit_end=NOW + timedelta(hours=1)),
        facts(),
        recorded(),
        recorded(destination=None),
        recorded(damaged=(("frames/img_0001.cbf", "corrupt"),)),
        recorded(changed="+1 file(s)", changed_seen_at=SYNCED + 1),
        facts(project=None),
        facts(attempt=Outcome.FAILED),
        facts(stuck=True),
        facts(on_host=False),
        facts(attempt=Outcome.DRY_RUN),
    ]
    assert {state_of(e) for e in examples} == set(State)


def test_row_carries_source_and_destination_counts_and_the_state():
    row = report_row(recorded(destination=Holding(4, 4000), on_host=True, run_id="r1"), NOW)
    assert row["state"] == "partial"
    assert (row["source_files"], row["source_bytes"], row["destination_files"], row["destination_bytes"]) == (
        5,
        5000,
        4,
        4000,
    )
    assert row["last_verified"] == "2026-11-18T12:00+00:00"
    assert (row["recorded"], row["on_host"], row["last_run_id"]) == ("yes", "yes", "r1")


def test_attention_lists_what_is_not_home_most_urgent_first():
    rows = [
        report_row(f, NOW)
        for f in (
            facts(epn="1a", visit_end=NOW + timedelta(hours=1)),
            recorded(epn="2a"),
            facts(epn="3a", attempt=Outcome.FAILED),
            recorded(epn="4a", destination=None),
            facts(epn="5a"),
        )
    ]
    assert [r["epn"] for r in attention_order(rows)] == ["4a", "3a", "5a", "1a"]
    assert counts_by_state(rows) == {"partial": 1, "failed": 1, "waiting": 1, "running": 1, "home": 1}


def test_repair_selection_names_the_partial_epns_a_backfill_can_fetch():
    rows = [
        report_row(f, NOW)
        for f in (
            recorded(epn="13001a", destination=None),
            recorded(epn="12282a", destination=Holding(1, 1)),
            recorded(epn="12282b", destination=None, on_host=False),  # gone from the host: no backfill can help
            recorded(epn="12282c"),
        )
    ]
    assert repair_selection(rows) == "12282a, 13001a"


def test_repair_selection_includes_corrupt_epns():
    rows = [
        report_row(f, NOW)
        for f in (
            recorded(epn="12282a", damaged=(("frames/img_0002.cbf", "corrupt"),)),
            recorded(epn="12282b", damaged=(("x", "corrupt"),), on_host=False),
            recorded(epn="13001a", destination=None),
        )
    ]
    assert repair_selection(rows) == "12282a, 13001a"
    assert [r["state"] for r in attention_order(rows)] == ["corrupt", "corrupt", "partial"]  # the most urgent first


def test_bytes_are_summed_per_project_per_week_starting_monday():
    monday = datetime(2026, 11, 16, 9, tzinfo=UTC).timestamp()
    syncs = [
        (monday, "ny79", 100),
        (monday + 86400 * 6, "ny79", 50),
        (monday + 86400 * 7, "ny79", 7),
        (monday, "ab12", 1),
    ]
    assert bytes_by_week(syncs, UTC) == {
        (date(2026, 11, 16), "ny79"): 150,
        (date(2026, 11, 23), "ny79"): 7,
        (date(2026, 11, 16), "ab12"): 1,
    }


def test_backlog_counts_each_epn_from_its_visit_end_until_it_came_home():
    day = timedelta(days=1)
    ended = datetime(2026, 11, 16, 18, tzinfo=UTC)
    due = [
        (ended, (ended + 2 * day).timestamp()),  # home two days later
        (ended + day, None),  # not home yet
        (ended + 2 * day, (ended + 2 * day + timedelta(hours=1)).timestamp()),  # home the same day: never counted
    ]
    assert backlog_by_day(due, date(2026, 11, 20), UTC) == {
        date(2026, 11, 16): 1,
        date(2026, 11, 17): 2,
        date(2026, 11, 18): 1,
        date(2026, 11, 19): 1,
        date(2026, 11, 20): 1,
    }


def test_no_due_epn_means_no_backlog():
    assert backlog_by_day([], date(2026, 11, 20), UTC) == {}


def test_ended_epn_held_back_by_a_malformed_visit_is_waiting_naming_it():
    held = "the portal sent a malformed visit of it, so whether its beamtime is over is unknown: visit 50199 ..."
    decision = decide(facts(held=held), NOW)
    assert (decision.state, decision.detail) == (State.WAITING, held)
    assert decide(facts(held=held, attempt=Outcome.FAILED, error="rsync failed"), NOW).detail == held
    assert decide(facts(held=held, visit_end=NOW + timedelta(days=1)), NOW).state is State.RUNNING


def test_the_readmes_state_table_is_the_reports_wording():
    """One wording of what each state means: the README's table says what report.MEANING says, in order."""
    section = (REPO / "README.md").read_text().split("### The repatriation report", 1)[1]
    table = section.split("| state | meaning |\n| --- | --- |\n", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| (.+) \|$", table, re.M)
    assert rows == [(state.value, meaning) for state, meaning in MEANING.items()]
    assert [state for state, _ in rows] == [state.value for state in State]  # every state, once
