"""E-mail: the message built from a rendered alert, and sent over SMTP with errors an admin can act on.

`build_message` makes a multipart/alternative message (text, then HTML) with
its From, To, Date and Message-ID headers, and refuses an address list that
holds no usable address (`AddressError`). `Mailer.send` either hands the message to the server or raises `MailError`
saying which server (host:port) and what went wrong: connection refused,
timeout, unknown host, STARTTLS or login refused, sender or recipient
refused, message refused. The SMTP password never appears in a message,
a log line or `repr`. No Dagster imports.
"""

from __future__ import annotations

import logging
import smtplib
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formataddr, formatdate, getaddresses, make_msgid

from .config import Settings

log = logging.getLogger("assyncy.mail")


class AddressError(ValueError):
    """A recipient or sender list that holds no usable e-mail address."""


@dataclass(frozen=True)
class RenderedEmail:
    """Subject and the two bodies of an e-mail, ready for `build_message`."""

    subject: str
    text: str
    html: str


def parse_addresses(value: str | Sequence[str], what: str = "epnalert-email-to") -> list[str]:
    """E-mail addresses from a comma-separated string or a list of them, formatted for a header."""
    items = [value] if isinstance(value, str) else list(value)
    addresses = []
    for name, address in getaddresses([str(item) for item in items]):
        if not address or "@" not in address:
            raise AddressError(f"{what}: {', '.join(map(str, items))!r} holds an invalid e-mail address")
        addresses.append(formataddr((name, address)))
    if not addresses:
        raise AddressError(f"{what}: no e-mail address given")
    return addresses


def build_message(rendered: RenderedEmail, sender: str, recipients: str | Sequence[str]) -> EmailMessage:
    """A multipart/alternative message (text, then HTML) from `sender` to `recipients`.

    `recipients` may be one comma-separated string, as `epnalert-email-to` is.
    """
    senders = parse_addresses(sender, "epnalert-email-from")
    if len(senders) != 1:
        raise AddressError(f"epnalert-email-from: expected one address, got {sender!r}")
    from_address = senders[0]
    to = parse_addresses(recipients)
    message = EmailMessage()
    message["Subject"] = " ".join(str(rendered.subject).split())  # a header is one line
    message["From"] = from_address
    message["To"] = ", ".join(to)
    message["Date"] = formatdate(localtime=True)
    domain = getaddresses([from_address])[0][1].rpartition("@")[2] or None
    message["Message-ID"] = make_msgid(domain=domain)
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    return message


class MailError(Exception):
    """An e-mail could not be sent; the message names the server and the cause.

    `refused` maps each refused recipient to the server's (code, reply) when
    the server turned recipients down.
    """

    def __init__(self, message: str, refused: dict[str, tuple[int, bytes]] | None = None):
        super().__init__(message)
        self.refused = refused or {}


def _reply(code: int | None, reply: bytes | str | None) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply or "")
    text = " ".join(text.split())
    return f"{code} {text}".strip() if code is not None else text


class Mailer:
    """An SMTP client for one server: plain, or STARTTLS, with optional login."""

    def __init__(
        self,
        host: str,
        port: int = 25,
        *,
        starttls: bool = False,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
    ):
        if username and password is None:
            raise MailError("smtp-username is set but smtp-password is not: set both in config.yml, or neither")
        self.host = host
        self.port = int(port)
        self.starttls = starttls
        self.username = username or None
        self._password = password
        self.timeout = float(timeout)

    @classmethod
    def from_settings(cls, settings: Settings) -> Mailer:
        """A mailer for the server config.yml names (`epnalert-email-smtp`, `smtp-*`)."""
        return cls(
            settings.smtp_host,
            settings.smtp_port,
            starttls=settings.smtp_starttls,
            username=settings.smtp_username,
            password=settings.smtp_password,
            timeout=settings.smtp_timeout_seconds,
        )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        password = "'********'" if self._password else None
        return (
            f"Mailer(host={self.host!r}, port={self.port}, starttls={self.starttls}, "
            f"username={self.username!r}, password={password}, timeout={self.timeout})"
        )

    __str__ = __repr__

    def _scrub(self, text: str) -> str:
        # A server may echo what it was sent; never let that carry the password out.
        if self._password:
            text = text.replace(self._password, "********")
        return text

    def _fail(self, problem: str, refused: dict[str, tuple[int, bytes]] | None = None) -> MailError:
        return MailError(self._scrub(f"SMTP server {self.address}: {problem}"), refused)

    def send(self, message: EmailMessage) -> None:
        """Deliver `message` to the recipients in its To/Cc/Bcc headers, or raise MailError."""
        recipients = ", ".join(str(v) for k in ("To", "Cc", "Bcc") for v in message.get_all(k, []))
        log.info("Sending %r to %s via %s", str(message.get("Subject", "")), recipients, self.address)
        try:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        except ConnectionRefusedError:
            raise self._fail(
                "connection refused; check epnalert-email-smtp in config.yml and that the server runs"
            ) from None
        except TimeoutError:
            raise self._fail(f"no answer within {self.timeout:g} s (smtp-timeout-seconds)") from None
        except socket.gaierror as exc:
            raise self._fail(
                f"cannot resolve host name ({exc.strerror}); check epnalert-email-smtp in config.yml"
            ) from None
        except smtplib.SMTPConnectError as exc:
            raise self._fail(f"refused the connection: {_reply(exc.smtp_code, exc.smtp_error)}") from None
        except smtplib.SMTPServerDisconnected as exc:
            if isinstance(exc.__context__, TimeoutError):  # smtplib wraps a read timeout in this
                raise self._fail(f"no greeting within {self.timeout:g} s (smtp-timeout-seconds)") from None
            raise self._fail(f"closed the connection before greeting ({exc})") from None
        except OSError as exc:
            raise self._fail(f"cannot connect: {exc.strerror or exc}") from None
        try:
            self._deliver(smtp, message)
        except BaseException:
            # No QUIT after a failure: on a timeout it would wait as long again.
            smtp.close()
            raise
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            # The server has accepted the message; a failed goodbye does not change that.
            smtp.close()

    def _deliver(self, smtp: smtplib.SMTP, message: EmailMessage) -> None:
        try:
            if self.starttls:
                try:
                    smtp.starttls(context=ssl.create_default_context())
                except smtplib.SMTPNotSupportedError:
                    raise self._fail(
                        "does not offer STARTTLS; set smtp-starttls: false or use another server"
                    ) from None
                except ssl.SSLError as exc:
                    raise self._fail(f"TLS handshake failed: {exc.reason or exc}") from None
            if self.username:
                try:
                    smtp.login(self.username, self._password or "")
                except smtplib.SMTPNotSupportedError:
                    raise self._fail(
                        "does not offer login (AUTH); remove smtp-username, "
                        "or set smtp-starttls: true if it offers AUTH only over TLS"
                    ) from None
                except smtplib.SMTPAuthenticationError as exc:
                    raise self._fail(
                        f"login as {self.username!r} refused: {_reply(exc.smtp_code, exc.smtp_error)}; "
                        "check smtp-username and smtp-password in config.yml"
                    ) from None
            refused = smtp.send_message(message)
        except MailError:
            raise
        except smtplib.SMTPRecipientsRefused as exc:
            raise self._fail(f"refused every recipient: {self._describe(exc.recipients)}", exc.recipients) from None
        except smtplib.SMTPSenderRefused as exc:
            if exc.smtp_code == 530:
                raise self._fail(
                    f"requires login: {_reply(exc.smtp_code, exc.smtp_error)}; set smtp-username and smtp-password "
                    "in config.yml (and smtp-starttls: true if it offers login only over TLS)"
                ) from None
            raise self._fail(
                f"refused sender {exc.sender!r}: {_reply(exc.smtp_code, exc.smtp_error)}; check epnalert-email-from"
            ) from None
        except smtplib.SMTPDataError as exc:
            raise self._fail(f"refused the message: {_reply(exc.smtp_code, exc.smtp_error)}") from None
        except smtplib.SMTPResponseException as exc:
            raise self._fail(f"error {_reply(exc.smtp_code, exc.smtp_error)}") from None
        except smtplib.SMTPServerDisconnected as exc:
            if isinstance(exc.__context__, TimeoutError):
                raise self._fail(f"no answer within {self.timeout:g} s (smtp-timeout-seconds)") from None
            raise self._fail(f"connection lost ({exc})") from None
        except TimeoutError:
            raise self._fail(f"no answer within {self.timeout:g} s (smtp-timeout-seconds)") from None
        except smtplib.SMTPException as exc:
            raise self._fail(str(exc)) from None
        except OSError as exc:
            raise self._fail(f"connection failed: {exc.strerror or exc}") from None
        if refused:
            # Some recipients got it: say so, so that nobody assumes nobody did.
            raise self._fail(f"delivered, but refused some recipients: {self._describe(refused)}", refused)
        log.info("Sent %r via %s", str(message.get("Subject", "")), self.address)

    @staticmethod
    def _describe(refused: dict[str, tuple[int, bytes]]) -> str:
        return "; ".join(f"{address} ({_reply(code, reply)})" for address, (code, reply) in refused.items())
