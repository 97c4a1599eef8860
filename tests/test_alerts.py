"""The alert e-mails, rendered from the shipped templates and received by a real SMTP server."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from assyncy_dagster.alerts import (
    SUBJECT,
    AlertEntry,
    TemplateError,
    check_templates,
    render_failure_alert,
    render_unknown_epn_alert,
)
from assyncy_dagster.mail import AddressError, Mailer, build_message
from assyncy_dagster.portal import Person, Visit

ETC = Path(__file__).resolve().parent.parent / "etc"
TEXT, HTML = "epnalert-text.j2", "epnalert-html.j2"
AEDT = timezone(timedelta(hours=11))
START = datetime(2026, 3, 1, 8, 0, tzinfo=AEDT)

JANE = Person("Jane", "Doe", "jane.doe@example.edu")
MING = Person("Ming", "Li", "ming.li@example.edu")


def visit(epn: str, principal=JANE, scientists=(JANE, MING), equipment_id: int = 23) -> Visit:
    return Visit(
        id=1,
        epn=epn,
        start_time=START,
        end_time=START + timedelta(hours=24),
        principal_scientist=principal,
        data_scientists=tuple(scientists),
        equipment_id=equipment_id,
    )


def deliver(sink, rendered, to="helpdesk@example.edu"):
    Mailer(sink.host, sink.port, timeout=5).send(build_message(rendered, "assyncy@example.edu", to))
    (message,) = sink.wait_for(1, timeout=5)
    return message


def parts(message) -> tuple[str, str]:
    # SMTP carries CRLF line ends; compare text as a mail client shows it.
    text, html = (message.get_body((kind,)).get_content().replace("\r\n", "\n") for kind in ("plain", "html"))
    return text, html


def test_alert_arrives_with_exact_subject_and_text_and_html_parts(smtp_sink):
    rendered = render_unknown_epn_alert(ETC, TEXT, HTML, [AlertEntry("12282a", (visit("12282a"),))])

    message = deliver(smtp_sink, rendered)

    assert message["Subject"] == "Unknown ownership of EPNs"
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]


def test_epn_visit_start_and_scientists_appear_in_both_parts(smtp_sink):
    rendered = render_unknown_epn_alert(ETC, TEXT, HTML, [AlertEntry("12282a", (visit("12282a"),))])

    text, html = parts(deliver(smtp_sink, rendered))

    for body in (text, html):
        assert "12282a" in body
        assert "2026-03-01T08:00:00+11:00" in body
        assert "jane.doe@example.edu" in body and "ming.li@example.edu" in body
        assert "Ming" in body and "Li" in body
        assert "epn_cap_map" in body
    assert "Principal scientist: Jane Doe jane.doe@example.edu" in text


def test_data_scientists_form_a_table_in_the_text_part():
    rendered = render_unknown_epn_alert(ETC, TEXT, HTML, [AlertEntry("12282a", (visit("12282a"),))])

    assert (
        "First name    Last name    Email\n"
        "------------  -----------  --------------------\n"
        "Jane          Doe          jane.doe@example.edu\n"
        "Ming          Li           ming.li@example.edu\n"
    ) in rendered.text


def test_unknown_epns_without_visits_come_in_rows_of_eight(smtp_sink):
    epns = [f"{13000 + i}a" for i in range(10)]
    rendered = render_unknown_epn_alert(ETC, TEXT, HTML, [AlertEntry(e) for e in reversed(epns)])

    text, html = parts(deliver(smtp_sink, rendered))

    for body in (text, html):
        assert "  ".join(epns[:8]) in body
        assert re.search(r"^13008a  13009a$", body, re.MULTILINE)


def test_scientist_name_carrying_html_is_escaped_in_the_html_part(smtp_sink):
    evil = Person("<script>alert(1)</script>", "Tom & Jerry", "tom@example.edu")
    rendered = render_unknown_epn_alert(ETC, TEXT, HTML, [AlertEntry("12282a", (visit("12282a", evil, (evil,)),))])

    text, html = parts(deliver(smtp_sink, rendered))

    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Tom &amp; Jerry" in html
    assert "<script>alert(1)</script>" in text and "Tom & Jerry" in text


def test_seed_style_template_escapes_the_preformatted_details(tmp_path):
    # HPC ASSyncy's own templates put the pre-formatted strings in a <pre>.
    (tmp_path / "t.j2").write_text("{{ epn_details }}\n{{ unknown_epns }}\n")
    (tmp_path / "h.j2").write_text("<html><body><pre>\n{{ epn_details }}\n{{ unknown_epns }}\n</pre></body></html>\n")
    evil = Person("<b>Bold</b>", "Tom & Jerry", "tom@example.edu")

    rendered = render_unknown_epn_alert(tmp_path, "t.j2", "h.j2", [AlertEntry("12282a", (visit("12282a", evil, (evil,)),))])

    assert "<b>" not in rendered.html
    assert "&lt;b&gt;Bold&lt;/b&gt; Tom &amp; Jerry tom@example.edu" in rendered.html
    assert "<b>Bold</b> Tom & Jerry tom@example.edu" in rendered.text


def test_visit_without_principal_or_data_scientists_says_none_listed():
    rendered = render_unknown_epn_alert(ETC, TEXT, HTML, [AlertEntry("12300b", (visit("12300b", None, ()),))])

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


def test_every_comma_separated_recipient_receives_the_alert(smtp_sink):
    rendered = render_unknown_epn_alert(ETC, TEXT, HTML, [AlertEntry("12282a")])

    deliver(smtp_sink, rendered, to="helpdesk@example.edu, Data Team <data@example.edu>")

    assert smtp_sink.received[0].rcpt_tos == ("helpdesk@example.edu", "data@example.edu")


def test_recipient_list_without_an_address_is_refused_before_sending():
    with pytest.raises(AddressError, match="epnalert-email-to"):
        build_message(render_failure_alert("12282a", "x", "r1", None), "a@example.edu", " , ")


def test_failure_alert_carries_epn_error_and_run_link(smtp_sink):
    rendered = render_failure_alert(
        "12282a", "rsync exited with code 23: some files could not be transferred", "abc123", "http://dagster:3000/runs/abc123"
    )

    message = deliver(smtp_sink, rendered)
    text, html = parts(message)

    assert message["Subject"] == "Repatriation of EPN 12282a failed"
    for body in (text, html):
        assert "12282a" in body and "rsync exited with code 23" in body
    assert "http://dagster:3000/runs/abc123" in text
    assert '<a href="http://dagster:3000/runs/abc123">abc123</a>' in html


def test_failure_alert_shortens_a_long_error():
    error = "first line\nsecond line\n" + "third line " * 200

    rendered = render_failure_alert("12282a", error, "abc123", None)

    assert "first line\nsecond line [...]" in rendered.text
    assert "third line" not in rendered.text


def test_failure_alert_escapes_the_error_and_links_only_web_urls():
    rendered = render_failure_alert("12282a", "<img src=x onerror=alert(1)>", "r1", "javascript:alert(1)")

    assert "<img" not in rendered.html and "&lt;img" in rendered.html
    assert "href" not in rendered.html
