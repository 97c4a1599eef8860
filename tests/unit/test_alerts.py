"""The alert e-mails, rendered from the shipped templates and received by a real SMTP server."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

import assyncy_dagster
from assyncy_dagster.alerts.checking import check_templates
from assyncy_dagster.alerts.failure import FAILURE_HTML, FAILURE_TEXT, render_failure_alert
from assyncy_dagster.alerts.stuck_section import STUCK_SECTION_HTML, STUCK_SECTION_TEXT, StuckEntry
from assyncy_dagster.alerts.templates import TemplateError
from assyncy_dagster.alerts.unknown_epn import SUBJECT, AlertEntry, render_unknown_epn_alert
from assyncy_dagster.domain import Person
from assyncy_dagster.mail import AddressError, build_message
from assyncy_dagster_demo.testing.stack import ETC
from tests.support.helpers import HTML, TEXT, visit_of


def test_data_scientists_form_a_table_in_the_text_part():
    rendered = render_unknown_epn_alert(ETC, TEXT, HTML, [AlertEntry("12282a", (visit_of("12282a"),))])

    assert (
        "First name    Last name    Email\n"
        "------------  -----------  --------------------\n"
        "Jane          Doe          jane.doe@example.edu\n"
        "Ming          Li           ming.li@example.edu\n"
    ) in rendered.text


def test_seed_style_template_escapes_the_preformatted_details(tmp_path):
    # HPC ASSyncy's own templates put the pre-formatted strings in a <pre>.
    (tmp_path / "t.j2").write_text("{{ epn_details }}\n{{ unknown_epns }}\n")
    (tmp_path / "h.j2").write_text("<html><body><pre>\n{{ epn_details }}\n{{ unknown_epns }}\n</pre></body></html>\n")
    evil = Person("<b>Bold</b>", "Tom & Jerry", "tom@example.edu")

    rendered = render_unknown_epn_alert(
        tmp_path, "t.j2", "h.j2", [AlertEntry("12282a", (visit_of("12282a", evil, (evil,)),))]
    )

    assert "<b>" not in rendered.html
    assert "&lt;b&gt;Bold&lt;/b&gt; Tom &amp; Jerry tom@example.edu" in rendered.html
    assert "<b>Bold</b> Tom & Jerry tom@example.edu" in rendered.text


def test_visit_without_principal_or_data_scientists_says_none_listed():
    rendered = render_unknown_epn_alert(ETC, TEXT, HTML, [AlertEntry("12300b", (visit_of("12300b", None, ()),))])

    assert "Principal scientist: (none listed)" in rendered.text
    assert "(none listed)" in rendered.html


def test_digest_keeps_the_subject_and_says_digest_in_the_body():
    rendered = render_unknown_epn_alert(ETC, TEXT, HTML, [AlertEntry("12282a")], digest=True)

    assert rendered.subject == SUBJECT
    assert "Digest" in rendered.text and "Digest" in rendered.html


def test_misspelt_variable_is_a_template_error_naming_file_and_line(tmp_path):
    (tmp_path / "t.j2").write_text("Hello\n{{ epn_detials }}\n")
    (tmp_path / "h.j2").write_text("<p>{{ epn_details }}</p>\n")

    with pytest.raises(TemplateError) as caught:
        render_unknown_epn_alert(tmp_path, "t.j2", "h.j2", [AlertEntry("12282a")])

    assert str(tmp_path / "t.j2") in str(caught.value)
    assert "line 2" in str(caught.value)
    assert "epn_detials" in str(caught.value)


def test_missing_template_is_a_template_error_naming_file_and_setting(tmp_path):
    (tmp_path / "t.j2").write_text("{{ epn_details }}\n")

    with pytest.raises(TemplateError) as caught:
        render_unknown_epn_alert(tmp_path, "t.j2", "missing.j2", [AlertEntry("12282a")])

    assert str(tmp_path / "missing.j2") in str(caught.value)
    assert "epnalert-template-html" in str(caught.value)


def test_syntax_error_is_a_template_error_naming_file_and_line(tmp_path):
    (tmp_path / "t.j2").write_text("{{ epn_details }}\n")
    (tmp_path / "h.j2").write_text("<p>\n\n{% if digest %}unclosed\n")

    with pytest.raises(TemplateError) as caught:
        render_unknown_epn_alert(tmp_path, "t.j2", "h.j2", [AlertEntry("12282a")])

    assert "h.j2" in str(caught.value) and "syntax error" in str(caught.value)
    assert caught.value.lineno is not None


@pytest.mark.parametrize(
    "payload",
    [
        '{{ cycler.__init__.__globals__.os.popen("touch PWNED").read() }}',
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ epn_details.__class__.__init__.__globals__ }}",
    ],
)
def test_a_template_that_reaches_for_python_fails_to_render_and_runs_nothing(tmp_path, monkeypatch, payload):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.j2").write_text("Hello\n" + payload + "\n")
    (tmp_path / "h.j2").write_text("<p>{{ epn_details }}</p>\n")

    with pytest.raises(TemplateError) as caught:
        render_unknown_epn_alert(tmp_path, "t.j2", "h.j2", [AlertEntry("12282a")])

    assert "refused by the template sandbox" in str(caught.value) and "t.j2" in str(caught.value)
    assert not (tmp_path / "PWNED").exists()


def test_check_templates_accepts_the_shipped_templates():
    assert check_templates(ETC, TEXT, HTML) == []


def test_check_templates_reports_each_broken_template(tmp_path):
    (tmp_path / "t.j2").write_text("{% if digest %}{{ nope }}{% endif %}\n")

    problems = check_templates(tmp_path, "t.j2", "h.j2")

    assert len(problems) == 2
    assert "t.j2, line 1" in problems[0] and "nope" in problems[0]
    assert "h.j2" in problems[1] and "not found" in problems[1]


def test_check_templates_reports_a_missing_folder(tmp_path):
    assert "is not a folder" in check_templates(tmp_path / "nope", TEXT, HTML)[0]


def test_recipient_list_without_an_address_is_refused_before_sending():
    with pytest.raises(AddressError, match="epnalert-email-to"):
        build_message(render_failure_alert("12282a", "x", "r1", None), "a@example.edu", " , ")


def test_failure_alert_shortens_a_long_error():
    error = "first line\nsecond line\n" + "third line " * 200

    rendered = render_failure_alert("12282a", error, "abc123", None)

    assert "first line\nsecond line [...]" in rendered.text
    assert "third line" not in rendered.text


def test_failure_alert_escapes_the_error_and_links_only_web_urls():
    rendered = render_failure_alert("12282a", "<img src=x onerror=alert(1)>", "r1", "javascript:alert(1)")

    assert "<img" not in rendered.html and "&lt;img" in rendered.html
    assert "href" not in rendered.html


def test_every_email_text_is_a_template_in_etc():
    package = Path(assyncy_dagster.__file__).parent
    for name in (FAILURE_TEXT, FAILURE_HTML, STUCK_SECTION_TEXT, STUCK_SECTION_HTML, TEXT, HTML):
        assert (ETC / name).is_file(), name
    inline = [p.name for p in package.rglob("*.py") if "from_string(" in p.read_text()]
    assert inline == []


def test_a_template_folder_without_the_failure_templates_gets_the_shipped_ones(tmp_path):
    (tmp_path / TEXT).write_text("{{ epn_details }}\n")  # an admin's folder from before they existed

    from_admin = render_failure_alert("12282a", "rsync exit 23", "r1", "https://ui/runs/r1", template_folder=tmp_path)

    assert from_admin == render_failure_alert("12282a", "rsync exit 23", "r1", "https://ui/runs/r1")
    assert from_admin.text.startswith("Repatriation of EPN 12282a failed.\n\nError: rsync exit 23\n")


def test_the_admins_copy_of_a_failure_template_wins(tmp_path):
    (tmp_path / FAILURE_TEXT).write_text("EPN {{ epn }} did not come home: {{ error }}\n")

    rendered = render_failure_alert("12282a", "rsync exit 23", "r1", None, template_folder=tmp_path)

    assert rendered.text == "EPN 12282a did not come home: rsync exit 23\n"
    assert rendered.html == render_failure_alert("12282a", "rsync exit 23", "r1", None).html  # shipped


def test_an_old_template_folder_gets_the_shipped_stuck_section_and_an_admins_copy_wins(tmp_path):
    (tmp_path / "t.j2").write_text("{{ epn_details }}\n")
    (tmp_path / "h.j2").write_text("<html><body></body></html>\n")
    stuck = [StuckEntry("12282a", datetime(2026, 11, 18, 10, tzinfo=UTC), "failing: rsync exit 23")]
    now = datetime(2026, 11, 20, 12, tzinfo=UTC)

    shipped = render_unknown_epn_alert(tmp_path, "t.j2", "h.j2", [], digest=True, stuck=stuck, generated_at=now)
    (tmp_path / STUCK_SECTION_TEXT).write_text("{% for s in stuck %}STUCK {{ s.name }}{% endfor %}\n")
    own = render_unknown_epn_alert(tmp_path, "t.j2", "h.j2", [], digest=True, stuck=stuck, generated_at=now)

    assert shipped.text == (
        "\n\nStuck for more than 24 h without coming home\n"
        "- 12282a, since 2026-11-18 10:00 UTC (50 h): failing: rsync exit 23\n"
    )
    assert own.text == "\nSTUCK 12282a\n"
    assert own.html == shipped.html and "<h3>Stuck for more than 24 h" in shipped.html


def test_check_templates_tries_an_admins_copy_of_the_fixed_name_templates(tmp_path):
    (tmp_path / "t.j2").write_text("{{ epn_details }}\n")
    (tmp_path / "h.j2").write_text("<p>{{ epn_details }}</p>\n")
    assert check_templates(tmp_path, "t.j2", "h.j2") == []
    (tmp_path / FAILURE_HTML).write_text("<p>{{ run_link }}</p>\n")

    [problem] = check_templates(tmp_path, "t.j2", "h.j2")

    assert str(tmp_path / FAILURE_HTML) in problem and "run_link" in problem
