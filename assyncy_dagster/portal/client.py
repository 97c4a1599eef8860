"""Client of the Australian Synchrotron User Portal API: who visited which beamline when.

`PortalClient.visits(since, until)` asks every configured equipment (beamline)
for its visits and returns them merged, as `Visit` objects. Failures are
raised as `PortalError`s that name the equipment and the cause; they are never
turned into "no visits", because an empty answer would look like a quiet week.

Every answer is bounded twice: it is refused when larger than `max_answer_bytes`
(config `portal-max-answer-mib`), and each request (connecting, the headers and
the whole body) has one deadline, `timeout` seconds, kept by a watchdog that cuts
the connection when it passes, so a portal that drips bytes slowly cannot keep a
thread past it (socket timeouts alone are per read; see watchdog.py). `deadline` bounds every
request and retry of a client, e.g. to the sensor's tick budget.

Secrets (passwords, client passwords, access tokens) never reach a log line or
an exception message (redaction.py). The answers are checked and read into
visits by answers.py; this module is the HTTP side.

No Dagster imports: the resources, the CLI and the tests share this module.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

import requests

from ..config import DEFAULT_PORTAL_MAX_ANSWER_MIB, Settings
from ..domain import Visit, VisitsAnswer
from . import answers, redaction, watchdog
from .errors import PortalAuthError, PortalDataError, PortalError

TOKEN_PATH = "/api/v1/oauth/token"
VISITS_PATH = "/api/v1/equipment/{id}/visits"
DEFAULT_LOGGER_NAME = "assyncy.portal"

# Statuses worth asking again: the portal or a proxy in front of it is busy or restarting.
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_MAX_BACKOFF_SECONDS = 30.0
MIB = 1024 * 1024
_CHUNK_BYTES = 64 * 1024


class EquipmentAccount(Protocol):
    """What the client needs of an equipment entry (config.Equipment fits)."""

    id: int
    username: str
    password: str
    client_name: str
    client_password: str


class _Overdue(Exception):
    """The request's deadline passed before its answer was whole."""


class _TooLarge(Exception):
    """The answer is larger than `max_answer_bytes`."""


# -- client -----------------------------------------------------------------


_REPORTED_REJECTIONS: set[tuple[str, str]] = set()


class PortalClient:
    """Asks the portal for visits, one equipment account at a time, and merges the answers.

    Access tokens are cached per equipment; an HTTP 401 on a visits request
    means the token expired, so the client authenticates again, once, and
    repeats the request. Connection errors, timeouts, HTTP 429 and 5xx are
    retried `retries` more times with exponential backoff (`backoff`,
    `2 * backoff`, ...). Each request must be answered whole within `timeout`
    seconds, and no request or retry runs past `deadline` (a time.monotonic()
    instant); an answer larger than `max_answer_bytes` is refused, never
    retried. Give `session` to reuse a `requests.Session`; the client closes
    only the session it created.
    """

    def __init__(
        self,
        base_url: str,
        equipment: Sequence[EquipmentAccount],
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        verify: bool | str = True,
        logger: logging.Logger | logging.LoggerAdapter | None = None,
        session: requests.Session | None = None,
        max_answer_bytes: int = DEFAULT_PORTAL_MAX_ANSWER_MIB * MIB,
        deadline: float | None = None,
    ):
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries}")
        if max_answer_bytes <= 0:
            raise ValueError(f"max_answer_bytes must be more than 0, got {max_answer_bytes}")
        self.base_url = base_url.rstrip("/")
        self.equipment = list(equipment)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.verify = verify
        self.logger = logger or logging.getLogger(DEFAULT_LOGGER_NAME)
        self.max_answer_bytes = max_answer_bytes
        self.deadline = deadline
        self._own_session = session is None
        self.session = session or requests.Session()
        for prefix in ("https://", "http://"):
            self.session.mount(prefix, watchdog.WatchedAdapter())
        self._tokens: dict[int, str] = {}
        self._lock = threading.Lock()
        # Visits skipped as malformed in every answer so far: EPN (or "equipment N visit #i") -> why.
        self.rejected: dict[str, str] = {}
        redaction.install_urllib3_redaction()

    @classmethod
    def from_settings(
        cls, settings: Settings, logger: logging.Logger | None = None, deadline: float | None = None
    ) -> PortalClient:
        """A client for `base-url` and every `equipment` entry of config.yml."""
        return cls(
            settings.base_url,
            settings.equipment,
            timeout=settings.portal_timeout_seconds,
            retries=settings.portal_retries,
            verify=settings.verify_tls,
            logger=logger,
            max_answer_bytes=int(settings.portal_max_answer_mib * MIB),
            deadline=deadline,
        )

    def close(self) -> None:
        if self._own_session:
            self.session.close()

    def __enter__(self) -> PortalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public API ---------------------------------------------------------

    def authenticate(self, equipment: EquipmentAccount) -> str:
        """Get a fresh access token for one equipment account, cache it and return it."""
        where = f"equipment {equipment.id}"
        response = self._send(
            "POST",
            self.base_url + TOKEN_PATH,
            where=where,
            action="authenticate",
            auth=(equipment.client_name, equipment.client_password),
            data={"username": equipment.username, "password": equipment.password, "grant_type": "password"},
        )
        # The body of this answer holds the token: it is read, never logged.
        try:
            body = response.json()
        except ValueError:
            body = None
        token = answers.access_token(body)
        if response.ok and token:
            with self._lock:
                self._tokens[equipment.id] = token
            self.logger.debug(f"authenticated {where}")
            return token
        message = answers.meta_error(body)
        if response.ok and not message:
            raise PortalDataError(
                f"{self._portal()}: {where}: the token answer (HTTP {response.status_code}) holds no data.access_token"
            )
        reason = message or f"HTTP {response.status_code}"
        raise PortalAuthError(
            f"{self._portal()}: {where}: authentication refused: {self._scrub(reason)}; "
            f"check username, password, client_name and client_password of equipment {equipment.id} in config.yml"
        )

    def visits(self, since: datetime, until: datetime) -> list[Visit]:
        """Visits overlapping [since, until] on every equipment, sorted by (start_time, epn).

        Each visit carries the id of the equipment that reported it. Raises
        PortalError (PortalAuthError, PortalDataError) naming the equipment.
        Malformed visits are left out (see `answer`, which names them).
        """
        return self.answer(since, until).visits

    def answer(self, since: datetime, until: datetime) -> VisitsAnswer:
        """The visits of `visits`, and the ones the portal sent malformed (skipped, never guessed at)."""
        for name, value in (("since", since), ("until", until)):
            if value.tzinfo is None or value.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware, got {value.isoformat()}")
        merged: list[Visit] = []
        malformed: dict[str, str] = {}
        for equipment in self.equipment:
            merged.extend(self._equipment_visits(equipment, since, until, malformed))
        merged.sort(key=lambda v: (v.start_time, v.epn))
        return VisitsAnswer(merged, malformed)

    # -- internals ------------------------------------------------------------

    def _portal(self) -> str:
        return f"portal {self.base_url}"

    def _token(self, equipment: EquipmentAccount) -> str:
        with self._lock:
            token = self._tokens.get(equipment.id)
        return token or self.authenticate(equipment)

    def _forget_token(self, equipment: EquipmentAccount) -> None:
        with self._lock:
            self._tokens.pop(equipment.id, None)

    def _equipment_visits(
        self, equipment: EquipmentAccount, since: datetime, until: datetime, malformed: dict[str, str]
    ) -> list[Visit]:
        where = f"equipment {equipment.id}"
        url = self.base_url + VISITS_PATH.format(id=equipment.id)
        params = {"start_time": since.isoformat(timespec="seconds"), "end_time": until.isoformat(timespec="seconds")}

        def fetch() -> requests.Response:
            token = self._token(equipment)
            return self._send("GET", url, where=where, action="fetch visits", params={"access_token": token, **params})

        response = fetch()
        if response.status_code == 401:
            self.logger.info(f"{where}: access token rejected (HTTP 401), authenticating again")
            self._forget_token(equipment)
            response = fetch()
            if response.status_code == 401:
                raise PortalAuthError(
                    f"{self._portal()}: {where}: a fresh access token was rejected too (HTTP 401"
                    f"{self._meta_suffix(response)}); check that the account of equipment {equipment.id} "
                    "in config.yml may read this equipment's visits"
                )
        if not response.ok:
            error = PortalAuthError if response.status_code == 403 else PortalError
            raise error(
                f"{self._portal()}: {where}: fetching visits failed: HTTP {response.status_code}"
                f"{self._meta_suffix(response)}"
            )
        visits = self._parse_visits(equipment.id, response, malformed)
        self.logger.debug(f"{where}: {len(visits)} visits between {params['start_time']} and {params['end_time']}")
        return visits

    def _send(self, method: str, url: str, *, where: str, action: str, **kwargs: Any) -> requests.Response:
        """One request, retried on connection errors, timeouts, 429 and 5xx; raises PortalError when spent."""
        attempts = self.retries + 1
        cause = ""
        tried = 0
        for attempt in range(attempts):
            if attempt:
                delay = min(self.backoff * 2 ** (attempt - 1), _MAX_BACKOFF_SECONDS)
                if self.deadline is not None and time.monotonic() + delay >= self.deadline:
                    break  # no time left for another try
                self.logger.warning(
                    f"{where}: {action} failed ({cause}); retry {attempt} of {self.retries} in {delay:g} s"
                )
                time.sleep(delay)
            now = time.monotonic()
            patience = self.timeout
            if self.deadline is not None and self.deadline - now < patience:
                patience = round(self.deadline - now, 1)
            ends = now + patience
            if patience <= 0:
                cause = cause or "no time left before the deadline"
                break
            tried += 1
            try:
                response = self._request_whole(method, url, ends, **kwargs)
            except _TooLarge as exc:
                raise PortalDataError(
                    f"{self._portal()}: {where}: {action}: the answer is larger than portal-max-answer-mib "
                    f"({self.max_answer_bytes / MIB:g} MiB): {exc}; refused, not read further. Check base-url "
                    "in config.yml, or raise portal-max-answer-mib if the portal's answers really are this large"
                ) from None
            except (requests.Timeout, _Overdue):
                cause = f"no answer within {patience:g} s"
                continue
            except (
                requests.exceptions.InvalidURL,
                requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema,
            ) as exc:
                raise PortalError(
                    f"{self._portal()}: {where}: {action}: base-url in config.yml is not a usable URL: "
                    f"{self._describe(exc)}"
                ) from None
            except requests.exceptions.SSLError as exc:
                # A certificate problem does not heal by asking again.
                raise PortalError(
                    f"{self._portal()}: {where}: {action}: TLS verification failed: {self._describe(exc)}"
                ) from None
            except requests.RequestException as exc:
                # A connection the watchdog cut at the deadline reads as a broken one.
                cause = f"no answer within {patience:g} s" if time.monotonic() >= ends else self._describe(exc)
                continue
            if response.status_code in _RETRY_STATUSES:
                cause = f"HTTP {response.status_code}{self._meta_suffix(response)}"
                continue
            if response.is_redirect or 300 <= response.status_code < 400:
                target = str(response.headers.get("Location", "?")).split("?", 1)[0]
                raise PortalError(
                    f"{self._portal()}: {where}: {action}: the portal answered HTTP {response.status_code}, "
                    f"redirecting to {self._scrub(target)}; credentials are never sent on to another address: "
                    "set base-url in config.yml to the address the portal answers at"
                )
            return response
        within = " (the time allowed had run out)" if tried < attempts else ""
        raise PortalError(
            f"{self._portal()}: {where}: could not {action} after {tried} attempt"
            f"{'s' if tried != 1 else ''}{within}: {cause}; check base-url in config.yml and that the portal is up"
        )

    def _request_whole(self, method: str, url: str, ends: float, **kwargs: Any) -> requests.Response:
        """The response to one request with its body read whole, by `ends` (a time.monotonic() instant)
        and within `max_answer_bytes`. Raises _Overdue, _TooLarge or what requests raises."""
        with watchdog.deadline(ends):
            # Never follow a redirect: requests would re-send the password form (307/308)
            # or the access token in the query to wherever the answer points.
            response = self.session.request(
                method,
                url,
                timeout=max(0.001, ends - time.monotonic()),  # connect, and each read: never past `ends`
                verify=self.verify,
                allow_redirects=False,
                stream=True,
                **kwargs,
            )
            try:
                declared = int(response.headers.get("Content-Length") or 0)
            except ValueError:
                declared = 0
            if declared > self.max_answer_bytes:
                response.close()
                raise _TooLarge(f"it declares {declared} bytes")
            body = bytearray()
            for chunk in response.iter_content(chunk_size=_CHUNK_BYTES):
                body += chunk
                if len(body) > self.max_answer_bytes:
                    response.close()
                    raise _TooLarge(f"it went on past {len(body)} bytes")
                if time.monotonic() >= ends:
                    response.close()
                    raise _Overdue()
            response._content = bytes(body)  # what .json() and .text read
            return response

    def _parse_visits(self, equipment_id: int, response: requests.Response, malformed: dict[str, str]) -> list[Visit]:
        try:
            body = response.json()
        except ValueError:
            raise PortalDataError(
                f"{self._portal()}: equipment {equipment_id}: visits answer is not JSON "
                f"(starts {self._scrub(answers.short_repr(response.text[:40]))})"
            ) from None
        return answers.visits_of(
            body,
            portal=self._portal(),
            equipment_id=equipment_id,
            reject=lambda key, reason: self._reject(malformed, key, reason),
            logger=self.logger,
        )

    def _reject(self, malformed: dict[str, str], key: str, reason: str) -> None:
        """Record a skipped visit in `malformed` and `rejected` (several of one EPN are all named);
        log it once per process, not at every tick."""
        reason = self._scrub(reason)
        for found in (malformed, self.rejected):
            if reason not in found.get(key, ""):
                found[key] = f"{found[key]}; {reason}" if key in found else reason
        if (key, reason) not in _REPORTED_REJECTIONS:
            _REPORTED_REJECTIONS.add((key, reason))
            self.logger.warning(f"skipping a malformed visit ({key}); every other visit is used: {reason}")

    def _meta_suffix(self, response: requests.Response) -> str:
        try:
            message = answers.meta_error(response.json())
        except ValueError:
            message = None
        return f": {self._scrub(message)}" if message else ""

    def _describe(self, exc: BaseException) -> str:
        text = str(exc)
        # requests quotes the whole URL, access token included; the host and port are already named.
        text = re.sub(r" with url: \S+", "", text)
        return self._scrub(f"{type(exc).__name__}: {text}")[:300]

    def _scrub(self, text: str) -> str:
        with self._lock:
            secrets = list(self._tokens.values())
        for equipment in self.equipment:
            secrets += [equipment.password, equipment.client_password]
        return redaction.scrub(text, secrets)
