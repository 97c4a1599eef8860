"""A real SMTP server on 127.0.0.1 that keeps what it receives, for the tests and the demo.

`SmtpSink` runs aiosmtpd in a background thread on a free port. Every message
it accepts is parsed with `email.policy.default` and kept in memory with its
envelope, and, when `save_dir` is given, written there as an `.eml` file that
any mail client opens.

Faults are produced at the SMTP level, as a real server would produce them:
`refuse_next(n, reply)` answers the next n messages' DATA with an error code,
`refuse_recipients` turns addresses down at RCPT, and `auth=(user, password)`
makes the server demand a login before it accepts mail. No Dagster imports.
"""

from __future__ import annotations

import email
import email.policy
import logging
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReceivedMail:
    """One accepted message and its envelope."""

    message: EmailMessage
    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    path: Path | None = None


class _FreePortController(Controller):
    """aiosmtpd's Controller, bound to port 0 so that the kernel picks a free port without a race."""

    def _create_server(self):
        async def create():
            server = await self.loop.create_server(
                self._factory_invoker, host=self.hostname, port=self.port, ssl=self.ssl_context
            )
            # Set before start() probes the server, which connects to self.port.
            self.port = server.sockets[0].getsockname()[1]
            return server

        return create()


class _Handler:
    def __init__(self, sink: SmtpSink):
        self.sink = sink

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]) -> str:
        # Enforced here rather than with aiosmtpd's auth_required, which warns when TLS is not also required.
        if self.sink.auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        if address.lower() in self.sink.refuse_recipients:
            return "550 5.1.1 Recipient address rejected: no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return self.sink._receive(envelope)


class SmtpSink:
    """A real SMTP server on 127.0.0.1 and a free port that stores every message it accepts.

    Use as a context manager or with `start()` / `stop()`.
    """

    def __init__(
        self,
        *,
        save_dir: str | Path | None = None,
        auth: tuple[str, str] | None = None,
        refuse_recipients: tuple[str, ...] = (),
    ):
        self.host = "127.0.0.1"
        self.save_dir = Path(save_dir) if save_dir else None
        self.auth = auth
        self.refuse_recipients = {a.lower() for a in refuse_recipients}
        self.received: list[ReceivedMail] = []
        self.login_attempts: list[str] = []
        self._refuse_count = 0
        self._refuse_reply = ""
        self._condition = threading.Condition()
        self._controller: _FreePortController | None = None

    # -- lifecycle ------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._controller is None:
            raise RuntimeError("SmtpSink is not running: call start() first")
        return self._controller.port

    def start(self) -> SmtpSink:
        """Start listening; returns self once the server answers."""
        if self._controller is not None:
            raise RuntimeError("SmtpSink is already running")
        if self.save_dir:
            self.save_dir.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {}
        if self.auth:
            # Plain-text AUTH on loopback: good enough to prove the client logs in.
            kwargs.update(authenticator=self._authenticate, auth_require_tls=False)
        controller = _FreePortController(_Handler(self), hostname=self.host, port=0, **kwargs)
        controller.start()
        self._controller = controller
        log.info("SMTP sink listening on %s:%d", self.host, self.port)
        return self

    def stop(self) -> None:
        """Stop listening (idempotent)."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- fault injection --------------------------------------------------------

    def refuse_next(self, count: int = 1, reply: str = "554 5.6.0 Message refused for testing") -> None:
        """Answer the next `count` messages' DATA with `reply` (a 4xx or 5xx SMTP reply) instead of accepting them."""
        code = reply[:3]
        if not (code.isdigit() and code[0] in "45"):
            raise ValueError(f"reply must start with a 4xx or 5xx code, got {reply!r}")
        with self._condition:
            self._refuse_count = count
            self._refuse_reply = reply

    # -- what arrived -----------------------------------------------------------

    @property
    def messages(self) -> list[EmailMessage]:
        """Every accepted message, oldest first."""
        with self._condition:
            return [r.message for r in self.received]

    def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[EmailMessage]:
        """Block until at least `count` messages arrived; return them all, or raise TimeoutError."""
        with self._condition:
            if not self._condition.wait_for(lambda: len(self.received) >= count, timeout):
                raise TimeoutError(
                    f"SMTP sink received {len(self.received)} message(s), expected {count} within {timeout} s"
                )
            return [r.message for r in self.received]

    def clear(self) -> None:
        with self._condition:
            self.received.clear()

    # -- server side (runs in aiosmtpd's thread) --------------------------------

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword) or self.auth is None:
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        with self._condition:
            self.login_attempts.append(login)
        return AuthResult(success=(login, password) == self.auth, handled=False)

    def _receive(self, envelope: Any) -> str:
        with self._condition:
            if self._refuse_count > 0:
                self._refuse_count -= 1
                return self._refuse_reply
        raw: bytes = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        path = None
        with self._condition:
            number = len(self.received) + 1
            if self.save_dir:
                path = self.save_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{number:04d}.eml"
                path.write_bytes(raw)
            self.received.append(ReceivedMail(message, envelope.mail_from or "", tuple(envelope.rcpt_tos), raw, path))
            self._condition.notify_all()
        return "250 2.0.0 Message accepted for delivery"
