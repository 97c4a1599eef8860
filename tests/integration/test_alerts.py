"""Alert e-mails as a real SMTP server receives them: subject, both parts, recipients."""

from __future__ import annotations

import re

from assyncy_dagster.alerts.failure import render_failure_alert
from assyncy_dagster.alerts.unknown_epn import AlertEntry, render_unknown_epn_alert
from assyncy_dagster.domain import Person
from assyncy_dagster.mail import Mailer, build_message
from assyncy_dagster_demo.testing.stack import ETC
from tests.support.helpers import HTML, TEXT, text_and_html, visit_of


def deliver(sink, rendered, to="helpdesk@example.edu"):
    Mailer(sink.host, sink.port, timeout=5).send(build_message(rendered, "assyncy@example.edu", to))
    (message,) = sink.wait_for(1, timeout=5)
    return message


def test_alert_arrives_with_exact_subject_and_text_and_html_parts(smtp_sink):
    rendered = render_unknown_epn_alert(ETC, TEXT, HTML, [AlertEntry("12282a", (visit_of("12282a"),))])

    message = deliver(smtp_sink, rendered)

    assert message["Subject"] == "Unknown ownership of EPNs"
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]


def test_epn_visit_start_and_scientists_appear_in_both_parts(smtp_sink):
    rendered = render_unknown_epn_alert(ETC, TEXT, HTML, [AlertEntry("12282a", (visit_of("12282a"),))])

    text, html = text_and_html(deliver(smtp_sink, rendered))

    for body in (text, html):
        assert "12282a" in body
        assert "2026-03-01T08:00:00+11:00" in body
        assert "jane.doe@example.edu" in body and "ming.li@example.edu" in body
        assert "Ming" in body and "Li" in body
        assert "epn_cap_map" in body
    assert "Principal scientist: Jane Doe jane.doe@example.edu" in text


def test_unknown_epns_without_visits_come_in_rows_of_eight(smtp_sink):
    epns = [f"{13000 + i}a" for i in range(10)]
    rendered = render_unknown_epn_alert(ETC, TEXT, HTML, [AlertEntry(e) for e in reversed(epns)])

    text, html = text_and_html(deliver(smtp_sink, rendered))

    for body in (text, html):
        assert "  ".join(epns[:8]) in body
        assert re.search(r"^13008a  13009a$", body, re.MULTILINE)


def test_scientist_name_carrying_html_is_escaped_in_the_html_part(smtp_sink):
    evil = Person("<script>alert(1)</script>", "Tom & Jerry", "tom@example.edu")
    rendered = render_unknown_epn_alert(ETC, TEXT, HTML, [AlertEntry("12282a", (visit_of("12282a", evil, (evil,)),))])

    text, html = text_and_html(deliver(smtp_sink, rendered))

    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Tom &amp; Jerry" in html
    assert "<script>alert(1)</script>" in text and "Tom & Jerry" in text


def test_every_comma_separated_recipient_receives_the_alert(smtp_sink):
    rendered = render_unknown_epn_alert(ETC, TEXT, HTML, [AlertEntry("12282a")])

    deliver(smtp_sink, rendered, to="helpdesk@example.edu, Data Team <data@example.edu>")

    assert smtp_sink.received[0].rcpt_tos == ("helpdesk@example.edu", "data@example.edu")


def test_failure_alert_carries_epn_error_and_run_link(smtp_sink):
    rendered = render_failure_alert(
        "12282a",
        "rsync exited with code 23: some files could not be transferred",
        "abc123",
        "http://dagster:3000/runs/abc123",
    )

    message = deliver(smtp_sink, rendered)
    text, html = text_and_html(message)

    assert message["Subject"] == "Repatriation of EPN 12282a failed"
    for body in (text, html):
        assert "12282a" in body and "rsync exited with code 23" in body
    assert "http://dagster:3000/runs/abc123" in text
    assert '<a href="http://dagster:3000/runs/abc123">abc123</a>' in html
