"""Sending e-mail to a real SMTP server, and the errors an admin sees when it fails."""

from __future__ import annotations

import logging
import socket

import pytest

from assyncy_dagster.alerts.failure import render_failure_alert
from assyncy_dagster.mail import Mailer, MailError, build_message
from assyncy_dagster.resources.smtp import SmtpResource
from assyncy_dagster_demo.testing.smtp_sink import SmtpSink
from tests.support.helpers import SMTP_PASSWORD, SMTP_USER, sample_config


def message(to="helpdesk@example.edu"):
    return build_message(render_failure_alert("12282a", "rsync failed", "run-1", None), "assyncy@example.edu", to)


def mailer_for(sink: SmtpSink, **kwargs) -> Mailer:
    return Mailer(sink.host, sink.port, timeout=5, **kwargs)


def test_message_is_delivered_to_the_server(smtp_sink):
    mailer_for(smtp_sink).send(message())

    (received,) = smtp_sink.wait_for(1, timeout=5)
    assert received["Subject"] == "Repatriation of EPN 12282a failed"
    assert smtp_sink.received[0].mail_from == "assyncy@example.edu"


def test_refused_message_raises_mail_error_naming_server_and_reply(smtp_sink):
    smtp_sink.refuse_next(1, "554 5.7.1 Message rejected as spam")

    with pytest.raises(MailError) as caught:
        mailer_for(smtp_sink).send(message())

    assert f"127.0.0.1:{smtp_sink.port}" in str(caught.value)
    assert "554 5.7.1 Message rejected as spam" in str(caught.value)
    assert smtp_sink.messages == []


def test_temporary_refusal_is_reported_and_the_next_send_succeeds(smtp_sink):
    smtp_sink.refuse_next(1, "451 4.3.0 Try again later")

    with pytest.raises(MailError, match=r"451 4.3.0"):
        mailer_for(smtp_sink).send(message())
    mailer_for(smtp_sink).send(message())

    assert len(smtp_sink.wait_for(1, timeout=5)) == 1


def test_closed_port_raises_connection_refused():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens there any more: the kernel answers the connect with RST.

    with pytest.raises(MailError) as caught:
        Mailer("127.0.0.1", port, timeout=5).send(message())

    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "connection refused" in str(caught.value)


def test_silent_server_raises_timeout():
    # A socket that listens but never accepts: the TCP handshake succeeds, the greeting never comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]

        with pytest.raises(MailError, match=r"no greeting within 0\.3 s"):
            Mailer("127.0.0.1", port, timeout=0.3).send(message())


def test_refused_recipient_raises_mail_error_naming_it():
    with SmtpSink(refuse_recipients=("nobody@example.edu",)) as sink, pytest.raises(MailError) as caught:
        mailer_for(sink).send(message("nobody@example.edu"))

    assert "nobody@example.edu" in str(caught.value) and "550" in str(caught.value)
    assert set(caught.value.refused) == {"nobody@example.edu"}


def test_partly_refused_recipients_raise_after_delivering_to_the_rest():
    with SmtpSink(refuse_recipients=("nobody@example.edu",)) as sink:
        with pytest.raises(MailError, match=r"delivered, but refused some recipients: nobody@example.edu"):
            mailer_for(sink).send(message("helpdesk@example.edu, nobody@example.edu"))
        sink.wait_for(1, timeout=5)

        assert sink.received[0].rcpt_tos == ("helpdesk@example.edu",)


def test_login_with_username_and_password_delivers():
    with SmtpSink(auth=(SMTP_USER, SMTP_PASSWORD)) as sink:
        mailer_for(sink, username=SMTP_USER, password=SMTP_PASSWORD).send(message())

        assert len(sink.wait_for(1, timeout=5)) == 1
        assert sink.login_attempts == [SMTP_USER]


def test_wrong_password_error_and_logs_never_show_the_password(caplog):
    caplog.set_level(logging.DEBUG)
    with SmtpSink(auth=(SMTP_USER, "the-right-one")) as sink:
        mailer = mailer_for(sink, username=SMTP_USER, password=SMTP_PASSWORD)
        with pytest.raises(MailError) as caught:
            mailer.send(message())

    assert "login as 'assyncy' refused" in str(caught.value) and "535" in str(caught.value)
    assert "smtp-password" in str(caught.value)
    seen = [str(caught.value), repr(caught.value), str(caught.value.__context__), repr(mailer), caplog.text]
    assert not [text for text in seen if SMTP_PASSWORD in text]


def test_server_that_requires_login_says_to_configure_it():
    with (
        SmtpSink(auth=(SMTP_USER, SMTP_PASSWORD)) as sink,
        pytest.raises(MailError, match=r"requires login.*smtp-username and smtp-password"),
    ):
        mailer_for(sink).send(message())


def test_starttls_against_a_server_without_it_raises_mail_error(smtp_sink):
    with pytest.raises(MailError, match="does not offer STARTTLS"):
        mailer_for(smtp_sink, starttls=True).send(message())


def test_smtp_resource_sends_through_the_configured_server(tmp_path, monkeypatch):
    with SmtpSink(auth=(SMTP_USER, SMTP_PASSWORD)) as sink:
        path = sample_config(
            tmp_path,
            **{
                "epnalert-email-smtp": f"{sink.host}:{sink.port}",
                "smtp-username": SMTP_USER,
                "smtp-password": SMTP_PASSWORD,
                "smtp-allow-plaintext-login": True,
            },  # the local sink offers no TLS
        )
        monkeypatch.setenv("ASSYNCY_CONFIG", str(path))
        resource = SmtpResource()

        resource.send(resource.compose(render_failure_alert("12282a", "boom", "run-1", None)))

        (received,) = sink.wait_for(1, timeout=5)
        assert received["To"] == "to@domain.edu" and received["From"] == "from@domain.edu"
        assert SMTP_PASSWORD not in repr(resource)


def test_sink_saves_each_message_as_an_eml_file(tmp_path):
    with SmtpSink(save_dir=tmp_path / "mail") as sink:
        mailer_for(sink).send(message())
        sink.wait_for(1, timeout=5)

    (saved,) = (tmp_path / "mail").glob("*.eml")
    assert b"Subject: Repatriation of EPN 12282a failed" in saved.read_bytes()
