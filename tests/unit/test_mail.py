"""A Mailer's settings and what it shows of them, without sending anything."""

from __future__ import annotations

import pytest

from assyncy_dagster.config import load_settings
from assyncy_dagster.mail import Mailer, MailError
from tests.support.helpers import SMTP_PASSWORD, SMTP_USER, sample_config


def test_repr_masks_the_password():
    text = repr(Mailer("smtp.example.edu", 587, starttls=True, username=SMTP_USER, password=SMTP_PASSWORD))

    assert SMTP_PASSWORD not in text and "********" in text and "smtp.example.edu" in text


def test_username_without_password_is_a_config_mistake():
    with pytest.raises(MailError, match="smtp-password is not"):
        Mailer("smtp.example.edu", username=SMTP_USER)


def test_mailer_from_settings_uses_the_configured_server(tmp_path):
    path = sample_config(
        tmp_path,
        **{
            "epnalert-email-smtp": "mail.example.edu:2525",
            "smtp-starttls": True,
            "smtp-username": SMTP_USER,
            "smtp-password": SMTP_PASSWORD,
            "smtp-timeout-seconds": 7,
        },
    )

    mailer = Mailer.from_settings(load_settings(path))

    assert (mailer.host, mailer.port, mailer.starttls, mailer.username, mailer.timeout) == (
        "mail.example.edu",
        2525,
        True,
        SMTP_USER,
        7.0,
    )
