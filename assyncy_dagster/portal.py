"""Client of the Australian Synchrotron User Portal API: who visited which beamline when.

`PortalClient.visits(since, until)` asks every configured equipment (beamline)
for its visits and returns them merged, as `Visit` objects. Failures are
raised as `PortalError`s that name the equipment and the cause; they are never
turned into "no visits", because an empty answer would look like a quiet week.

Every answer is bounded twice: it is refused when larger than `max_answer_bytes`
(config `portal-max-answer-mib`), and each request (connecting, the headers and
the whole body) has one deadline, `timeout` seconds, kept by a watchdog that cuts
the connection when it passes, so a portal that drips bytes slowly cannot keep a
thread past it (socket timeouts alone are per read). `deadline` bounds every
request and retry of a client, e.g. to the sensor's tick budget.

Secrets (passwords, client passwords, access tokens) never reach a log line or
an exception message: texts that could carry one are scrubbed first, and the
request log of urllib3, which would print the access token from the visits
URL, is redacted (see `_RedactAccessTokens`).

No Dagster imports: the resources, the CLI and the tests share this module.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

import requests
import urllib3
from requests.adapters import HTTPAdapter

from .config import DEFAULT_PORTAL_MAX_ANSWER_MIB, Settings
from .domain import Person, Visit, VisitsAnswer, aware
from .epn import is_valid_epn

TOKEN_PATH = "/api/v1/oauth/token"
VISITS_PATH = "/api/v1/equipment/{id}/visits"
REQUIRED_VISIT_FIELDS = ("id", "epn", "start_time", "end_time")
DEFAULT_LOGGER_NAME = "assyncy.portal"

# Statuses worth asking again: the portal or a proxy in front of it is busy or restarting.
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_MAX_BACKOFF_SECONDS = 30.0
_REPR_LIMIT = 60
_ACCESS_TOKEN_IN_URL = re.compile(r"(access_token=)[^&\s\"')]+")
MIB = 1024 * 1024
_CHUNK_BYTES = 64 * 1024


class EquipmentAccount(Protocol):
    """What the client needs of an equipment entry (config.Equipment fits)."""

    id: int
    username: str
    password: str
    client_name: str
    client_password: str


# -- errors -----------------------------------------------------------------


class PortalError(Exception):
    """The portal could not be asked, or did not answer usefully."""


class PortalAuthError(PortalError):
    """The portal refused the credentials or the access token of an equipment."""


class PortalDataError(PortalError):
    """The portal answered, but not with what its API promises."""


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


# -- logging safety -----------------------------------------------------------


class _RedactAccessTokens(logging.Filter):
    """Hide `access_token=...` in urllib3's request log ("GET /...?access_token=T HTTP/1.1" 200)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to fix
            return True
        if "access_token=" in message:
            record.msg = _ACCESS_TOKEN_IN_URL.sub(r"\1***", message)
            record.args = ()
        return True


_redaction_lock = threading.Lock()


def _install_urllib3_redaction() -> None:
    # Filters on a logger apply only to records created by that very logger,
    # so the filter goes on each urllib3 logger that prints request URLs.
    with _redaction_lock:
        for name in ("urllib3.connectionpool", "urllib3.util.retry"):
            logger = logging.getLogger(name)
            if not any(isinstance(f, _RedactAccessTokens) for f in logger.filters):
                logger.addFilter(_RedactAccessTokens())


# -- one deadline per request ----------------------------------------------------

# The connection each thread has in flight, so that a watchdog can cut it at the deadline.
_in_flight: dict[int, Any] = {}
_in_flight_lock = threading.Lock()


# Named as urllib3's own pools, whose class name its error messages quote to the admin.
class HTTPConnectionPool(urllib3.HTTPConnectionPool):
    """urllib3's pool, telling the watchdog which connection each thread is using."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)
        with _in_flight_lock:
            _in_flight[threading.get_ident()] = conn
        return conn


class HTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    """urllib3's pool, telling the watchdog which connection each thread is using."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)
        with _in_flight_lock:
            _in_flight[threading.get_ident()] = conn
        return conn


_WATCHED_POOLS = {"http": HTTPConnectionPool, "https": HTTPSConnectionPool}


class _WatchedAdapter(HTTPAdapter):
    """requests' adapter, with pools that tell the watchdog which connection a thread is using."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_WATCHED_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if type(manager) is urllib3.ProxyManager:  # a SOCKS proxy keeps its own pools (and per-read timeouts)
            manager.pool_classes_by_scheme = dict(_WATCHED_POOLS)
        return manager


def _cut(thread_id: int) -> None:
    """The watchdog's act: end the connection `thread_id` is reading from, so its read returns now."""
    with _in_flight_lock:
        conn = _in_flight.get(thread_id)
    sock = getattr(conn, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed: nothing left to cut
            sock.shutdown(socket.SHUT_RDWR)


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
            self.session.mount(prefix, _WatchedAdapter())
        self._tokens: dict[int, str] = {}
        self._lock = threading.Lock()
        # Visits skipped as malformed in every answer so far: EPN (or "equipment N visit #i") -> why.
        self.rejected: dict[str, str] = {}
        _install_urllib3_redaction()

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
        token = None
        if isinstance(body, dict) and isinstance(body.get("data"), dict):
            token = body["data"].get("access_token")
        if response.ok and isinstance(token, str) and token:
            with self._lock:
                self._tokens[equipment.id] = token
            self.logger.debug(f"authenticated {where}")
            return token
        message = _meta_error(body)
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
        thread_id = threading.get_ident()
        watchdog = threading.Timer(max(0.0, ends - time.monotonic()), _cut, args=(thread_id,))
        watchdog.daemon = True
        watchdog.start()
        try:
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
        finally:
            watchdog.cancel()
            with _in_flight_lock:
                _in_flight.pop(thread_id, None)

    def _parse_visits(self, equipment_id: int, response: requests.Response, malformed: dict[str, str]) -> list[Visit]:
        where = f"equipment {equipment_id}"
        try:
            body = response.json()
        except ValueError:
            raise PortalDataError(
                f"{self._portal()}: {where}: visits answer is not JSON "
                f"(starts {self._scrub(_short_repr(response.text[:40]))})"
            ) from None
        data = body.get("data") if isinstance(body, dict) else None
        raw_visits = data.get("visits") if isinstance(data, dict) else None
        if raw_visits is None:
            raise PortalDataError(f"{self._portal()}: {where}: visits answer has no data.visits")
        if not isinstance(raw_visits, list):
            raise PortalDataError(
                f"{self._portal()}: {where}: data.visits is a {type(raw_visits).__name__}, expected a list"
            )
        visits = []
        for index, raw in enumerate(raw_visits):
            try:
                visit = self._parse_visit(equipment_id, index, raw)
            except PortalDataError as exc:
                # One malformed visit must not stop every other EPN from syncing: skip it alone.
                # Its EPN, when it can be read, is held back by the caller (planning.visits_hold).
                epn = raw.get("epn") if isinstance(raw, dict) and is_valid_epn(raw.get("epn")) else None
                self._reject(malformed, epn or f"equipment {equipment_id} visit #{index}", str(exc))
                continue
            if visit is not None:
                visits.append(visit)
        return visits

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

    def _parse_visit(self, equipment_id: int, index: int, raw: Any) -> Visit | None:
        where = f"{self._portal()}: equipment {equipment_id}: visit #{index}"
        if not isinstance(raw, dict):
            raise PortalDataError(f"{where} is a {type(raw).__name__}, expected an object")
        # The portal's own id and the EPN name the visit, so that an admin can chase it at the portal.
        names = [f"id {_short_repr(raw['id'])}"] if raw.get("id") not in (None, "") else []
        names += [f"EPN {raw['epn']}"] if is_valid_epn(raw.get("epn")) else []
        where += f" ({', '.join(names)})" if names else ""
        missing = [name for name in REQUIRED_VISIT_FIELDS if raw.get(name) in (None, "")]
        if missing:
            raise PortalDataError(f"{where} lacks {', '.join(missing)}")
        epn = raw["epn"]
        if not is_valid_epn(epn):
            # One bad entry must not stop every other EPN from syncing; it must not reach a path either.
            self.logger.warning(
                f"equipment {equipment_id}: visit #{index} has an invalid EPN {_short_repr(epn)}; skipping it"
            )
            return None
        times = {}
        for name in ("start_time", "end_time"):
            value = raw[name]
            try:
                times[name] = aware(datetime.fromisoformat(value), name)
            except (TypeError, ValueError):
                raise PortalDataError(
                    f"{where}: {name} {_short_repr(value)} is not an ISO 8601 time with UTC offset"
                ) from None
        return Visit(
            id=raw["id"],
            epn=epn,
            start_time=times["start_time"],
            end_time=times["end_time"],
            principal_scientist=self._parse_person(raw.get("principal_scientist"), where, "principal_scientist"),
            data_scientists=self._parse_people(raw.get("data_scientists"), where),
            equipment_id=equipment_id,
        )

    @staticmethod
    def _parse_person(raw: Any, where: str, name: str) -> Person | None:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise PortalDataError(f"{where}: {name} is a {type(raw).__name__}, expected an object")
        return Person.from_dict(raw)

    @classmethod
    def _parse_people(cls, raw: Any, where: str) -> tuple[Person, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise PortalDataError(f"{where}: data_scientists is a {type(raw).__name__}, expected a list")
        people = (cls._parse_person(p, where, f"data_scientists[{i}]") for i, p in enumerate(raw))
        return tuple(p for p in people if p is not None)

    def _meta_suffix(self, response: requests.Response) -> str:
        try:
            message = _meta_error(response.json())
        except ValueError:
            message = None
        return f": {self._scrub(message)}" if message else ""

    def _describe(self, exc: BaseException) -> str:
        text = str(exc)
        # requests quotes the whole URL, access token included; the host and port are already named.
        text = re.sub(r" with url: \S+", "", text)
        return self._scrub(f"{type(exc).__name__}: {text}")[:300]

    def _scrub(self, text: str) -> str:
        text = _ACCESS_TOKEN_IN_URL.sub(r"\1***", text)
        with self._lock:
            secrets = list(self._tokens.values())
        for equipment in self.equipment:
            secrets += [equipment.password, equipment.client_password]
        for secret in sorted(set(secrets), key=len, reverse=True):
            if secret and len(secret) >= 3:
                text = text.replace(secret, "***")
        return text


def _meta_error(body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("meta"), dict):
        message = body["meta"].get("error_message")
        if message:
            return str(message)[:300]
    return None
