"""The helpdesk's mail server as a resource."""

from __future__ import annotations

from collections.abc import Sequence
from email.message import EmailMessage

import dagster as dg

from ..config import Settings
from ..mail import Mailer, RenderedEmail, build_message
from .settings import current_settings


class SmtpResource(dg.ConfigurableResource):
    """The SMTP server that carries the EPN alerts (`epnalert-email-smtp` in config.yml).

    Server, STARTTLS, login and the sender and recipients are read from
    config.yml at every use, so an edit takes effect at the next run; none can
    be set at launch time. The SMTP
    password stays in config.yml (or the environment variable it names) and
    never enters Dagster's config, the UI or the run logs. A failed delivery
    raises `MailError` naming the server and the cause.
    """

    def settings(self) -> Settings:
        return current_settings()

    def mailer(self) -> Mailer:
        """A mailer for the server config.yml names."""
        return Mailer.from_settings(self.settings())

    def compose(self, rendered: RenderedEmail, recipients: str | Sequence[str] | None = None) -> EmailMessage:
        """`rendered` as a message from `epnalert-email-from` to `recipients` (default `epnalert-email-to`)."""
        settings = self.settings()
        return build_message(rendered, settings.epnalert_email_from, recipients or settings.epnalert_email_to)

    def send(self, message: EmailMessage) -> None:
        """Deliver `message`; raise MailError when the server does not take it."""
        self.mailer().send(message)
