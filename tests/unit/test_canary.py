"""The stuck-EPN canary's rules: which EPNs are due, why each is stuck, once a day,
refresh failures, and how the digest shows them. No servers."""

from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from assyncy_dagster import canary
from assyncy_dagster.alerts.checking import check_templates
from assyncy_dagster.alerts.stuck_section import StuckEntry
from assyncy_dagster.alerts.unknown_epn import SUBJECT, AlertEntry, render_unknown_epn_alert
from assyncy_dagster.canary import (
    IN_FLIGHT,
    NOT_ON_HOST,
    REQUESTED,
    describe,
    due_reasons,
    mark_reported,
    read_reported,
    record_due,
    unreported,
)
from assyncy_dagster.domain import Visit
from assyncy_dagster.due import due_file, read_due_since
from assyncy_dagster.planning import CyclePlan
from assyncy_dagster.portal.errors import PortalAuthError, PortalError
from assyncy_dagster.refresh_failures import failure_kind
from assyncy_dagster.transfer import RsyncError
from assyncy_dagster.transfer.errors import HostKeyError
from assyncy_dagster_demo.testing.stack import DEMO_CAP_MAP, ETC
from tests.support.helpers import HTML, NOW, TEXT, visit_of


def visit_around_now(epn: str, ended: bool = True) -> Visit:
    """A visit of `epn` that began two days before NOW and ended a day ago (or ends in a day)."""
    return visit_of(epn, None, (), 0, start=NOW - timedelta(days=2), end=NOW + timedelta(days=-1 if ended else 1))


def storage(tmp_path: Path):
    """Just enough of an instance for the canary's files."""
    return SimpleNamespace(storage_directory=lambda: str(tmp_path))


# -- which EPNs are due ------------------------------------------------------------------


def test_due_are_the_plans_mapped_ended_epns_not_home_each_with_why():
    plan = CyclePlan(
        repatriate=["12282a"],
        held_back={
            "12282b": "last 2 run(s) failed; retrying after ...",
            "13001a": "no folder on the SFTP host yet",
            "13001b": "visit still running (ends ...)",
            "13001c": "no visit in the portal within visit-day-range",
        },
        in_flight=["13001d"],
    )
    visits = [visit_around_now(e) for e in ("12282a", "12282b", "13001a", "13001d", "13001e")]
    visits.append(visit_around_now("13001b", ended=False))
    on_sftp = ["12282a", "12282b", "13001b", "13001c", "13001d"]

    due = due_reasons(plan, visits, on_sftp, home=["13001e"], epn_cap_map=DEMO_CAP_MAP, now=NOW)

    assert due == {
        "12282a": REQUESTED,
        "12282b": "last 2 run(s) failed; retrying after ...",
        "13001a": NOT_ON_HOST,
        "13001d": IN_FLIGHT,
    }


def test_an_epn_with_one_visit_still_running_is_not_due():
    plan = CyclePlan(held_back={"12282a": "visit still running"})
    visits = [visit_around_now("12282a"), visit_around_now("12282a", ended=False)]
    assert due_reasons(plan, visits, ["12282a"], [], DEMO_CAP_MAP, NOW) == {}


def test_home_unmapped_and_invalid_epns_are_never_due():
    plan = CyclePlan(repatriate=["12282a", "99999a", "../x"])
    visits = [visit_around_now("12282a"), visit_around_now("99999a"), visit_around_now("../x")]
    assert due_reasons(plan, visits, ["12282a", "99999a", "../x"], ["12282a"], DEMO_CAP_MAP, NOW) == {}


def test_the_clock_starts_at_the_first_sighting_and_reasons_follow_the_latest_tick(tmp_path):
    instance = storage(tmp_path)
    record_due(instance, {"12282a": REQUESTED}, NOW)
    later = NOW + timedelta(hours=5)
    record_due(instance, {"12282a": IN_FLIGHT, "12282b": NOT_ON_HOST}, later)

    assert read_due_since(instance) == {"12282a": NOW.timestamp(), "12282b": later.timestamp()}
    assert canary.read_reasons(instance) == {"12282a": IN_FLIGHT, "12282b": NOT_ON_HOST}
    record_due(instance, {}, later)  # home, or unmapped: no longer due
    assert read_due_since(instance) == {} and canary.read_reasons(instance) == {}


# -- why each is stuck ---------------------------------------------------------------------


def test_each_stuck_epn_gets_the_reason_that_fits_what_the_instance_says_now():
    assert describe(REQUESTED, ("r1", "queued"), None) == "waiting on a run: run r1 is queued"
    assert (
        describe(NOT_ON_HOST, None, (3, "rsync exit 23"))
        == "failing: 3 run(s) failed in a row; last error: rsync exit 23"
    )
    assert describe(NOT_ON_HOST, None, None) == NOT_ON_HOST
    assert describe(REQUESTED, None, None).startswith("waiting on a run")
    assert (
        describe("its folder on the SFTP host held no files", None, None)
        == "held back: its folder on the SFTP host held no files"
    )


# -- refresh failures ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("what", "exc", "kind"),
    [
        ("portal", PortalAuthError("equipment 23: authentication refused (HTTP 401)"), "portal authentication"),
        ("portal", PortalError("HTTP 500"), "portal unavailable"),
        ("SFTP host", HostKeyError("host key changed", exit_code=255), "SSH host key"),
        (
            "SFTP host",
            RsyncError("ssh failed", exit_code=255, stderr_tail="u@h: Permission denied (publickey)."),
            "SSH authentication",
        ),
        (
            "SFTP host",
            RsyncError("ssh failed", exit_code=255, stderr_tail="Connection refused"),
            "SFTP host unavailable",
        ),
        # rsync exits 12 instead of 255 when it sees the closed pipe before ssh's exit.
        (
            "SFTP host",
            RsyncError(
                "listing failed",
                exit_code=12,
                stderr_tail="u@h: Permission denied (publickey).\n"
                "rsync: connection unexpectedly closed (0 bytes received so far) [Receiver]",
            ),
            "SSH authentication",
        ),
        (
            "SFTP host",
            RsyncError("ssh failed", exit_code=255, stderr_tail="Permission denied, please try again."),
            "SSH authentication",
        ),
        # A file rsync may not read is no login problem.
        (
            "SFTP host",
            RsyncError(
                "listing failed",
                exit_code=23,
                stderr_tail='rsync: [sender] opendir "/data/12282a/raw" failed: Permission denied (13)',
            ),
            "SFTP host unavailable",
        ),
        ("SFTP host", TimeoutError("the SFTP host did not answer within 40 s"), "SFTP host not answering"),
    ],
)
def test_a_refresh_failure_is_named_by_its_kind(what, exc, kind):
    assert failure_kind(what, exc) == kind


# -- once a day ----------------------------------------------------------------------------


def test_each_stuck_epn_is_reported_at_most_once_a_day(tmp_path):
    instance = storage(tmp_path)
    entries = [StuckEntry("12282a", NOW, "x"), StuckEntry("portal", NOW, "y")]
    today = date(2026, 11, 20)
    assert unreported(entries, read_reported(instance), today) == entries

    mark_reported(instance, ["12282a"], today)

    assert unreported(entries, read_reported(instance), today) == entries[1:]
    assert unreported(entries, read_reported(instance), today + timedelta(days=1)) == entries
    mark_reported(instance, ["portal"], today + timedelta(days=1))
    assert read_reported(instance) == {"portal": "2026-11-21"}, "older days are forgotten"


# -- in the digest ---------------------------------------------------------------------------


STUCK = [
    StuckEntry("12282a", NOW - timedelta(hours=50), "failing: 1 run(s) failed in a row; last error: <b>rsync</b> & co"),
    StuckEntry(
        "SFTP host", NOW - timedelta(hours=30), "SSH authentication failing at every refresh: Permission denied"
    ),
]


def test_the_digest_lists_each_stuck_epn_with_its_reason_in_both_parts_escaped_in_html():
    rendered = render_unknown_epn_alert(
        ETC,
        TEXT,
        HTML,
        [AlertEntry("14500a")],
        digest=True,
        stuck=STUCK,
        generated_at=NOW,
        timezone="Australia/Melbourne",
    )

    assert rendered.subject == f"{SUBJECT}; stuck: 12282a, SFTP host"
    assert "14500a" in rendered.text and "Stuck EPNs" in rendered.text
    assert (
        "- 12282a, since 2026-11-18 21:00 AEDT (50 h): failing: 1 run(s) failed in a row; last error: "
        "<b>rsync</b> & co" in rendered.text
    )
    assert "SFTP host, since 2026-11-19 17:00 AEDT (30 h): SSH authentication" in rendered.text
    assert "<td>12282a</td>" in rendered.html and "&lt;b&gt;rsync&lt;/b&gt; &amp; co" in rendered.html
    assert "<b>rsync</b>" not in rendered.html


def test_a_digest_of_stuck_epns_alone_says_no_epn_is_unmapped():
    rendered = render_unknown_epn_alert(ETC, TEXT, HTML, [], digest=True, stuck=STUCK[:1], generated_at=NOW)

    assert "every EPN on the SFTP host has an owner configured" in rendered.text
    assert "What to do" not in rendered.text and "12282a" in rendered.text
    assert "every EPN on the SFTP host has an owner configured" in rendered.html


def test_an_admins_template_without_the_canary_gets_the_stuck_section_appended(tmp_path):
    (tmp_path / "t.j2").write_text("{{ epn_details }}\n{{ unknown_epns }}\n")
    (tmp_path / "h.j2").write_text("<html><body><pre>\n{{ unknown_epns }}\n</pre></body></html>\n")

    rendered = render_unknown_epn_alert(
        tmp_path,
        "t.j2",
        "h.j2",
        [AlertEntry("14500a")],
        digest=True,
        stuck=STUCK,
        notes=["the portal <said> no"],
        generated_at=NOW,
    )

    assert "- 12282a, since 2026-11-18 10:00 UTC (50 h): failing" in rendered.text
    assert "Note: the portal <said> no" in rendered.text
    assert rendered.html.index("12282a") < rendered.html.index("</body>")
    assert "&lt;b&gt;rsync" in rendered.html and "&lt;said&gt;" in rendered.html and "<said>" not in rendered.html


def test_a_template_that_shows_the_stuck_epns_gets_no_second_section(tmp_path):
    (tmp_path / "t.j2").write_text("{% include 'stuck.j2' %}\n")
    (tmp_path / "stuck.j2").write_text("{% for s in stuck %}{{ s.name }}: {{ s.reason }}\n{% endfor %}")
    (tmp_path / "h.j2").write_text("<p>{{ stuck_text }}</p>\n")

    rendered = render_unknown_epn_alert(tmp_path, "t.j2", "h.j2", [], digest=True, stuck=STUCK, generated_at=NOW)

    assert rendered.text.count("12282a") == 1 and rendered.html.count("12282a") == 1


def test_without_stuck_epns_the_digest_is_as_before():
    rendered = render_unknown_epn_alert(ETC, TEXT, HTML, [AlertEntry("14500a")], digest=True, generated_at=NOW)

    assert rendered.subject == SUBJECT
    assert "Stuck" not in rendered.text and "Stuck" not in rendered.html


def test_check_templates_tries_the_stuck_section(tmp_path):
    assert check_templates(ETC, TEXT, HTML) == []
    (tmp_path / "t.j2").write_text("{% for s in stuck %}{{ s.nmae }}{% endfor %}\n")
    (tmp_path / "h.j2").write_text("<p></p>\n")
    [problem] = check_templates(tmp_path, "t.j2", "h.j2")
    assert "nmae" in problem


def test_the_due_file_is_where_due_py_says(tmp_path):
    instance = storage(tmp_path)
    record_due(instance, {"12282a": REQUESTED}, NOW)
    assert due_file(instance).parent == tmp_path and (tmp_path / canary.REASONS_FILE).exists()
