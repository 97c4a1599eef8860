"""A simulator of the Australian Synchrotron User Portal API, over real HTTP.

Only the synchrotron can reach the real portal, so the demo and the tests talk
to this one. It serves the endpoints and answer shapes the real API uses:

- `POST /api/v1/oauth/token`: HTTP basic auth (client_name, client_password),
  form fields `username`, `password`, `grant_type=password`;
  `{"data": {"access_token": ...}}` or HTTP 401 `{"meta": {"error_message": ...}}`.
- `GET /api/v1/equipment/<id>/visits?access_token=T&start_time=ISO&end_time=ISO`:
  `{"data": {"visits": [...]}}`, the visits overlapping the window.
- `GET /api/v1/equipment/<id>`, `/api/v1/equipment/<id>/proposals`,
  `/api/v1/proposalAllocations/<id>/visits`.

A token is valid for the equipment of the account that obtained it, until it
expires (`token-ttl-seconds`). Faults are injected through the constructor,
the command line, or at run time through the control endpoints:

- `POST /_sim/faults` `{"fail_next": N, "status": 500, "delay_seconds": x,
  "malformed_next": N, "body_next": N, "body": {...}, "down": true|false,
  "path": "visits"}` (`path` limits the faults to API paths containing it);
- `POST /_sim/expire-tokens`; `GET /_sim/stats`; `POST /_sim/reset-stats`.

The data file (YAML or JSON)::

    token-ttl-seconds: 3600          # optional
    timezone: Australia/Melbourne    # optional, for relative times
    equipment:
      - id: 23
        username: demo-user
        password: demo-password
        client_name: demo-client
        client_password: demo-client-password
        name: MX1                    # optional
        visits:
          - {id: 1, epn: 12282a, start_time: now-10d, end_time: now-9d,
             principal_scientist: {first_names: Ada, last_name: Lovelace, email: ada@example.edu},
             data_scientists: []}

Times are ISO 8601 with offset, or relative to the simulator's start
(`now`, `now-3d`, `now+2h`, `now-90m`, `now-1d+6h`) so that a demo file stays
valid forever. No Dagster imports.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import re
import secrets
import signal
import socket
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta, tzinfo
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from assyncy_dagster.etc_files import etc_path

DEFAULT_TOKEN_TTL = 3600
DEFAULT_TIMEZONE = "Australia/Melbourne"
ACCOUNT_FIELDS = ("username", "password", "client_name", "client_password")
_RELATIVE = re.compile(r"now((?:\s*[+-]\s*\d+(?:\.\d+)?\s*[wdhms])*)")
_RELATIVE_TERM = re.compile(r"([+-])\s*(\d+(?:\.\d+)?)\s*([wdhms])")
_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
_EQUIPMENT_PATH = re.compile(r"/api/v1/equipment/(\d+)(/visits|/proposals)?/?")
_ALLOCATION_PATH = re.compile(r"/api/v1/proposalAllocations/(\d+)/visits/?")
_FAULT_KEYS = ("fail_next", "status", "delay_seconds", "malformed_next", "body_next", "body", "down", "path")
_MALFORMED_BODY = b'{"data": {"visits": [{"id": 1, "epn": "12282a", "start_'


class SimulatorDataError(ValueError):
    """The simulator's data file is wrong; the message names the file and the entry."""


# -- data loading -------------------------------------------------------------


def _zone(name: str | None) -> tzinfo:
    if not name or name.upper() == "UTC":
        return UTC
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(name)
    except Exception as exc:  # zoneinfo raises several kinds; all mean "unknown here"
        raise SimulatorDataError(f"timezone {name!r} is not known on this machine ({exc})") from None


def resolve_time(value: Any, now: datetime) -> datetime | None:
    """A data-file time as an aware datetime: `now`, `now-3d`, ISO 8601 with offset; else None."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    match = _RELATIVE.fullmatch(text)
    if match:
        # Count in UTC: elapsed time, not wall-clock time across a daylight-saving change.
        moment = now.astimezone(UTC)
        for sign, amount, unit in _RELATIVE_TERM.findall(match.group(1)):
            delta = timedelta(**{_UNITS[unit]: float(amount)})
            moment = moment + delta if sign == "+" else moment - delta
        return moment.astimezone(now.tzinfo)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def load_data(source: dict[str, Any] | str | Path) -> tuple[dict[str, Any], str]:
    """The data as a dict, and a name for messages (the file name, or `<data>`)."""
    if isinstance(source, dict):
        return source, "<data>"
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SimulatorDataError(f"{path}: cannot read the visits file: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (ValueError, yaml.YAMLError) as exc:
        raise SimulatorDataError(f"{path}: not valid YAML or JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SimulatorDataError(f"{path}: expected a mapping with an 'equipment' list at the top level")
    return data, path.name


class _Visit:
    """A visit ready to serve: its instants for filtering and its JSON, encoded once."""

    __slots__ = ("allocation_id", "encoded", "end", "epn", "equipment_id", "start")

    def __init__(self, start, end, epn, allocation_id, equipment_id, encoded):
        self.start, self.end, self.epn = start, end, epn
        self.allocation_id, self.equipment_id, self.encoded = allocation_id, equipment_id, encoded

    def overlaps(self, since: datetime | None, until: datetime | None) -> bool:
        if self.start is None or self.end is None:
            return True  # a broken visit is served as it is, for clients to cope with
        return (until is None or self.start <= until) and (since is None or self.end >= since)


class _Equipment:
    __slots__ = ("account", "id", "name", "visits")

    def __init__(self, id, name, account, visits):
        self.id, self.name, self.account, self.visits = id, name, account, visits


def _render_time(value: Any, moment: datetime | None) -> Any:
    if isinstance(value, str) and not _RELATIVE.fullmatch(value.strip()):
        return value  # absolute text is served exactly as written
    if moment is not None:
        return moment.isoformat()
    return value.isoformat() if isinstance(value, datetime) else value


def _base_digits(epn: Any) -> str | None:
    match = re.match(r"[0-9]+", epn) if isinstance(epn, str) else None
    return match.group(0) if match else None


def _parse_equipment(data: dict[str, Any], name: str, now: datetime, strict: bool) -> dict[int, _Equipment]:
    items = data.get("equipment")
    if not isinstance(items, list) or not items:
        raise SimulatorDataError(f"{name}: 'equipment' must be a non-empty list")
    result: dict[int, _Equipment] = {}
    for i, item in enumerate(items):
        where = f"{name}: equipment[{i}]"
        if not isinstance(item, dict):
            raise SimulatorDataError(f"{where}: expected a mapping")
        if not isinstance(item.get("id"), int) or isinstance(item.get("id"), bool):
            raise SimulatorDataError(f"{where}.id: expected an integer, got {item.get('id')!r}")
        for key in ACCOUNT_FIELDS:
            if not isinstance(item.get(key), str) or not item[key]:
                raise SimulatorDataError(f"{where}.{key}: missing or not a string")
        if item["id"] in result:
            raise SimulatorDataError(f"{where}.id: equipment {item['id']} is listed twice")
        raw_visits = item.get("visits") or []
        if not isinstance(raw_visits, list):
            raise SimulatorDataError(f"{where}.visits: expected a list")
        visits = []
        for j, raw in enumerate(raw_visits):
            visits.append(_parse_visit(raw, f"{where}.visits[{j}]", item["id"], now, strict))
        result[item["id"]] = _Equipment(
            item["id"],
            str(item.get("name") or f"Equipment {item['id']}"),
            tuple(item[k] for k in ACCOUNT_FIELDS),
            visits,
        )
    return result


def _parse_visit(raw: Any, where: str, equipment_id: int, now: datetime, strict: bool) -> _Visit:
    if not isinstance(raw, dict):
        if strict:
            raise SimulatorDataError(f"{where}: expected a mapping")
        return _Visit(None, None, None, None, equipment_id, json.dumps(raw, default=str))
    visit = dict(raw)
    moments = {}
    for key in ("start_time", "end_time"):
        moments[key] = resolve_time(visit.get(key), now)
        if strict and moments[key] is None:
            raise SimulatorDataError(
                f"{where}.{key}: {visit.get(key)!r} is neither ISO 8601 with offset nor now[+-]N[wdhms]"
            )
        if key in visit:
            visit[key] = _render_time(visit[key], moments[key])
    if strict:
        for key in ("id", "epn"):
            if visit.get(key) in (None, ""):
                raise SimulatorDataError(f"{where}.{key}: missing")
    visit.setdefault("principal_scientist", None)
    visit.setdefault("data_scientists", [])
    allocation = visit.get("proposal_allocation_id")
    if allocation is None:
        base = _base_digits(visit.get("epn"))
        allocation = int(base) if base else None
    return _Visit(
        moments["start_time"],
        moments["end_time"],
        visit.get("epn"),
        allocation,
        equipment_id,
        json.dumps(visit, ensure_ascii=False, default=str),
    )


def equipment_credentials(source: dict[str, Any] | str | Path) -> list[dict[str, Any]]:
    """Each equipment's `id` and account fields, as config.yml's `equipment` list wants them."""
    data, _ = load_data(source)
    return [{"id": item["id"], **{k: item[k] for k in ACCOUNT_FIELDS}} for item in data["equipment"]]


# -- the server ------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as requests.Session expects
    server_version = "PortalSimulator/1.0"
    timeout = 30  # an idle keep-alive connection does not hold a thread forever
    # Headers and body go out in two writes; with Nagle on, the second waits for a delayed ACK (40 ms).
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self.server.simulator._handle(self, "GET")  # type: ignore[attr-defined]

    def do_POST(self) -> None:
        self.server.simulator._handle(self, "POST")  # type: ignore[attr-defined]

    def do_PUT(self) -> None:
        self.server.simulator._handle(self, "PUT")  # type: ignore[attr-defined]

    do_DELETE = do_PUT

    def log_message(self, format: str, *args: Any) -> None:
        simulator = self.server.simulator  # type: ignore[attr-defined]
        if not simulator.quiet:
            line = format % args
            line = re.sub(r"(access_token=)[^&\s\"]+", r"\1***", line)
            sys.stderr.write(f"{self.address_string()} - {line}\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]):
        super().__init__(address, handler)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End idle keep-alive connections, whose threads would otherwise wait for the handler timeout."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up (or a stop that ends its connection) is not a simulator fault.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class PortalSimulator:
    """The portal API on a real socket, with switchable faults; a context manager.

    `data` is a dict or the path of a YAML/JSON file. `now` fixes the instant
    relative times count from (default: when the simulator is built).
    `faults` sets any `POST /_sim/faults` key from the start (e.g. `{"down": True}`).
    `strict=False` serves visits with missing fields or bad times unchanged,
    for testing clients against a broken portal.
    """

    def __init__(
        self,
        data: dict[str, Any] | str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        token_ttl: float | None = None,
        *,
        fail_first: int = 0,
        fail_status: int = 500,
        delay: float = 0.0,
        now: datetime | None = None,
        faults: dict[str, Any] | None = None,
        strict: bool = True,
        quiet: bool = True,
    ):
        raw, name = load_data(data)
        self.source_name = name
        self.zone = _zone(raw.get("timezone", DEFAULT_TIMEZONE))
        self.now = (now or datetime.now(self.zone)).replace(microsecond=0)
        if self.now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        ttl = token_ttl if token_ttl is not None else raw.get("token-ttl-seconds", DEFAULT_TOKEN_TTL)
        if not isinstance(ttl, (int, float)) or ttl <= 0:
            raise SimulatorDataError(f"{name}: token-ttl-seconds must be a positive number, got {ttl!r}")
        self.token_ttl = float(ttl)
        self.equipment = _parse_equipment(raw, name, self.now, strict)
        self.host, self.port, self.quiet = host, port, quiet
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[float, frozenset[int]]] = {}
        self._stats: Counter[str] = Counter()
        self._paths: Counter[str] = Counter()
        self._faults: dict[str, Any] = {
            "fail_next": fail_first,
            "status": fail_status,
            "delay_seconds": delay,
            "malformed_next": 0,
            "body_next": 0,
            "body": None,
            "down": False,
            "path": "",
        }
        if faults:
            self.set_faults(**faults)
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> PortalSimulator:
        """Listen and serve in a background thread; returns self."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server((self.host, self.port), _Handler)
        server.simulator = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="portal-simulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; wakes any request held by `delay_seconds`."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> PortalSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the portal simulator is not running: call start() first")
        address, port = self._server.server_address[:2]
        host = str(address)  # a TCP server's address: always a str
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    # -- control (also over HTTP under /_sim/) ----------------------------------

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """Change faults (keys of `POST /_sim/faults`); returns the faults now in force."""
        unknown = sorted(set(faults) - set(_FAULT_KEYS))
        if unknown:
            raise ValueError(f"unknown fault setting(s) {', '.join(unknown)}; known: {', '.join(_FAULT_KEYS)}")
        checks = {
            "fail_next": lambda v: isinstance(v, int) and v >= 0,
            "status": lambda v: isinstance(v, int) and 100 <= v <= 599,
            "delay_seconds": lambda v: isinstance(v, (int, float)) and v >= 0,
            "malformed_next": lambda v: isinstance(v, int) and v >= 0,
            "body_next": lambda v: isinstance(v, int) and v >= 0,
            "body": lambda v: True,
            "down": lambda v: isinstance(v, bool),
            "path": lambda v: isinstance(v, str),
        }
        for key, value in faults.items():
            # JSON true/false must not pass for a count (bool is an int in Python).
            is_flag = isinstance(value, bool)
            if (is_flag and key not in ("down", "body")) or not checks[key](value):
                raise ValueError(f"fault {key}: invalid value {value!r}")
        with self._lock:
            self._faults.update(faults)
            return dict(self._faults)

    def faults(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._faults)

    def expire_tokens(self) -> int:
        """Make every issued token expired, as if the TTL had passed; returns how many."""
        with self._lock:
            count = len(self._tokens)
            self._tokens = {t: (0.0, ids) for t, (_, ids) in self._tokens.items()}
            return count

    def stats(self) -> dict[str, Any]:
        """Request counts: `requests`, `token_requests`, `tokens_issued`, `auth_failures`,
        `visits_requests`, `unauthorized`, `forbidden`, `faults_injected`, and `by_path`."""
        with self._lock:
            result: dict[str, Any] = {
                key: self._stats[key]
                for key in (
                    "requests",
                    "token_requests",
                    "tokens_issued",
                    "auth_failures",
                    "visits_requests",
                    "unauthorized",
                    "forbidden",
                    "faults_injected",
                )
            }
            result["by_path"] = dict(self._paths)
            return result

    def issued_tokens(self) -> list[str]:
        """Every access token handed out so far (for tests proving that none leaks)."""
        with self._lock:
            return list(self._tokens)

    def reset_stats(self) -> None:
        with self._lock:
            self._stats.clear()
            self._paths.clear()

    # -- request handling ----------------------------------------------------------

    def _handle(self, handler: _Handler, method: str) -> None:
        parts = urlsplit(handler.path)
        path, query = parts.path, parse_qs(parts.query)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length > 0 else b""
        if path.startswith("/_sim/"):
            self._control(handler, method, path, body)
            return
        fault = self._take_fault(path)
        if fault == "down":
            handler.close_connection = True  # no answer at all: the client sees the connection drop
            return
        delay = fault.get("delay_seconds", 0) if isinstance(fault, dict) else 0
        if delay:
            self._stopping.wait(delay)
        if isinstance(fault, dict) and "respond" in fault:
            status, payload = fault["respond"]
            self._send_raw(handler, status, payload)
            return
        try:
            status, payload = self._route(handler, method, path, query, body)
        except Exception as exc:  # a simulator bug must answer 500, not hang the client
            status, payload = 500, {"meta": {"error_message": f"simulator error: {type(exc).__name__}"}}
        self._send(handler, status, payload)

    def _take_fault(self, path: str) -> str | dict[str, Any]:
        with self._lock:
            self._stats["requests"] += 1
            self._paths[path] += 1
            faults = self._faults
            if faults["path"] and faults["path"] not in path:
                return {}
            if faults["down"]:
                self._stats["faults_injected"] += 1
                return "down"
            fault: dict[str, Any] = {"delay_seconds": faults["delay_seconds"]}
            if faults["fail_next"] > 0:
                faults["fail_next"] -= 1
                status = faults["status"]
                answer = {"meta": {"error_message": f"simulated failure (HTTP {status})"}}
                fault["respond"] = (status, json.dumps(answer).encode())
            elif faults["malformed_next"] > 0:
                faults["malformed_next"] -= 1
                fault["respond"] = (200, _MALFORMED_BODY)
            elif faults["body_next"] > 0:
                faults["body_next"] -= 1
                fault["respond"] = (200, json.dumps(faults["body"]).encode())
            if "respond" in fault:
                self._stats["faults_injected"] += 1
            return fault

    def _control(self, handler: _Handler, method: str, path: str, body: bytes) -> None:
        route = (method, path.rstrip("/"))
        if route == ("POST", "/_sim/faults"):
            try:
                changes = json.loads(body or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("expected a JSON object")
                self._send(handler, 200, {"faults": self.set_faults(**changes)})
            except ValueError as exc:
                self._send(handler, 400, {"meta": {"error_message": str(exc)}})
        elif route == ("GET", "/_sim/faults"):
            self._send(handler, 200, {"faults": self.faults()})
        elif route == ("POST", "/_sim/expire-tokens"):
            self._send(handler, 200, {"expired": self.expire_tokens()})
        elif route == ("GET", "/_sim/stats"):
            self._send(handler, 200, self.stats())
        elif route == ("POST", "/_sim/reset-stats"):
            self.reset_stats()
            self._send(handler, 200, self.stats())
        else:
            self._send(handler, 404, {"meta": {"error_message": f"no control endpoint {method} {path}"}})

    def _route(
        self, handler: _Handler, method: str, path: str, query: dict[str, list[str]], body: bytes
    ) -> tuple[int, Any]:
        if path.rstrip("/") == "/api/v1/oauth/token":
            if method != "POST":
                return 405, _error("Method not allowed: use POST")
            return self._token(handler, body)
        match = _EQUIPMENT_PATH.fullmatch(path)
        allocation = _ALLOCATION_PATH.fullmatch(path)
        if not match and not allocation:
            return 404, _error(f"Not found: {path}")
        if method != "GET":
            return 405, _error("Method not allowed: use GET")
        ids = self._authorised_ids(handler, query)
        if isinstance(ids, tuple):
            return ids
        if allocation:
            return self._allocation_visits(int(allocation.group(1)), ids)
        assert match is not None  # neither path matched: answered 404 above
        equipment = self.equipment.get(int(match.group(1)))
        if equipment is None:
            return 404, _error(f"Equipment {match.group(1)} not found")
        if equipment.id not in ids:
            with self._lock:
                self._stats["forbidden"] += 1
            return 403, _error(f"This access token does not grant access to equipment {equipment.id}")
        kind = match.group(2)
        if kind == "/visits":
            return self._visits(equipment, query)
        if kind == "/proposals":
            return 200, {"data": {"proposals": _proposals(equipment.visits)}}
        return 200, {"data": {"equipment": {"id": equipment.id, "name": equipment.name}}}

    def _token(self, handler: _Handler, body: bytes) -> tuple[int, Any]:
        with self._lock:
            self._stats["token_requests"] += 1
        form = parse_qs(body.decode("utf-8", "replace"))
        field = {k: v[0] for k, v in form.items() if v}
        if field.get("grant_type") != "password":
            return self._auth_failure(400, "Unsupported grant type: use grant_type=password")
        client = _basic_auth(handler.headers.get("Authorization", ""))
        if client is None:
            return self._auth_failure(401, "Client authentication failed")
        clients = [e for e in self.equipment.values() if e.account[2:] == client]
        if not clients:
            return self._auth_failure(401, "Client authentication failed")
        ids = frozenset(e.id for e in clients if e.account[:2] == (field.get("username"), field.get("password")))
        if not ids:
            return self._auth_failure(401, "Invalid username or password")
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = (time.monotonic() + self.token_ttl, ids)
            self._stats["tokens_issued"] += 1
        return 200, {"data": {"access_token": token, "token_type": "Bearer", "expires_in": int(self.token_ttl)}}

    def _auth_failure(self, status: int, message: str) -> tuple[int, Any]:
        with self._lock:
            self._stats["auth_failures"] += 1
        return status, _error(message)

    def _authorised_ids(self, handler: _Handler, query: dict[str, list[str]]) -> frozenset[int] | tuple[int, Any]:
        token = (query.get("access_token") or [""])[0]
        header = handler.headers.get("Authorization", "")
        if not token and header.lower().startswith("bearer "):
            token = header[7:].strip()
        with self._lock:
            entry = self._tokens.get(token) if token else None
            if entry is None or entry[0] <= time.monotonic():
                self._stats["unauthorized"] += 1
                message = (
                    "Access token missing"
                    if not token
                    else ("The access token provided has expired" if entry else "The access token provided is invalid")
                )
                return 401, _error(message)
            return entry[1]

    def _visits(self, equipment: _Equipment, query: dict[str, list[str]]) -> tuple[int, Any]:
        with self._lock:
            self._stats["visits_requests"] += 1
        window: list[datetime | None] = []
        for key in ("start_time", "end_time"):
            text = (query.get(key) or [""])[0]
            if not text:
                window.append(None)
                continue
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                return 400, _error(f"{key} {text!r} is not an ISO 8601 time")
            window.append(moment if moment.tzinfo else moment.replace(tzinfo=self.zone))
        since, until = window
        chosen = [v.encoded for v in equipment.visits if v.overlaps(since, until)]
        return 200, _Encoded('{"data": {"visits": [' + ", ".join(chosen) + "]}}")

    def _allocation_visits(self, allocation_id: int, ids: frozenset[int]) -> tuple[int, Any]:
        chosen = [
            v.encoded
            for e in self.equipment.values()
            if e.id in ids
            for v in e.visits
            if v.allocation_id == allocation_id
        ]
        if not chosen:
            return 404, _error(f"Proposal allocation {allocation_id} not found")
        return 200, _Encoded('{"data": {"visits": [' + ", ".join(chosen) + "]}}")

    def _send(self, handler: _Handler, status: int, payload: Any) -> None:
        text = payload.text if isinstance(payload, _Encoded) else json.dumps(payload, ensure_ascii=False)
        self._send_raw(handler, status, text.encode("utf-8"))

    @staticmethod
    def _send_raw(handler: _Handler, status: int, body: bytes) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


class _Encoded:
    """JSON text already built from pre-encoded visits (10,000 of them need no re-encoding)."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


def _error(message: str) -> dict[str, Any]:
    return {"meta": {"error_message": message}}


def _basic_auth(header: str) -> tuple[str, str] | None:
    if not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, sep, password = decoded.partition(":")
    return (name, password) if sep else None


def _proposals(visits: list[_Visit]) -> list[dict[str, Any]]:
    proposals: dict[str, dict[str, Any]] = {}
    for visit in visits:
        base = _base_digits(visit.epn)
        if base is None:
            continue
        entry = proposals.setdefault(base, {"id": int(base), "number": base, "epns": [], "allocations": []})
        if visit.epn not in entry["epns"]:
            entry["epns"].append(visit.epn)
        allocation = {"id": visit.allocation_id, "equipment_id": visit.equipment_id}
        if allocation not in entry["allocations"]:
            entry["allocations"].append(allocation)
    return list(proposals.values())


# -- command line ----------------------------------------------------------------------


def add_portal_sim_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `assyncy portal-sim`."""
    parser.add_argument(
        "--visits",
        default=etc_path("demo-visits.yml"),
        metavar="FILE",
        help="YAML or JSON file of equipment accounts and visits (default: the demo's, etc/demo-visits.yml)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=0, help="port to listen on (default 0: any free port, printed at start)"
    )
    parser.add_argument(
        "--token-ttl",
        type=float,
        default=None,
        metavar="S",
        help="seconds an access token stays valid (default: the file's token-ttl-seconds, else 3600)",
    )
    parser.add_argument(
        "--fail-first", type=int, default=0, metavar="N", help="answer the first N API requests with --fail-status"
    )
    parser.add_argument(
        "--fail-status", type=int, default=500, metavar="CODE", help="HTTP status of injected failures (default 500)"
    )
    parser.add_argument(
        "--delay", type=float, default=0.0, metavar="S", help="wait S seconds before answering each API request"
    )
    parser.add_argument("--quiet", action="store_true", help="do not log each request to stderr")
    return parser


def serve_forever(args: argparse.Namespace) -> None:
    """Serve until SIGINT or SIGTERM; prints `portal simulator listening on URL` first."""
    simulator = PortalSimulator(
        args.visits,
        host=args.host,
        port=args.port,
        token_ttl=args.token_ttl,
        fail_first=args.fail_first,
        fail_status=args.fail_status,
        delay=args.delay,
        quiet=getattr(args, "quiet", False),
    )
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        # Set both explicitly: a shell that started us in the background may have left SIGINT ignored.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
    with simulator:
        print(f"portal simulator listening on {simulator.url}", flush=True)
        summary = ", ".join(f"equipment {e.id}: {len(e.visits)} visits" for e in simulator.equipment.values())
        print(f"{summary}; relative times count from {simulator.now.isoformat()}", flush=True)
        print("faults: POST /_sim/faults, POST /_sim/expire-tokens, GET /_sim/stats", flush=True)
        while not stop.wait(0.5):
            pass
    print("portal simulator stopped", flush=True)


def run_portal_sim(args: argparse.Namespace) -> int:
    """`assyncy portal-sim`: 0 after a clean stop, 2 when the data file or address is unusable."""
    try:
        serve_forever(args)
    except SimulatorDataError as exc:
        print(f"portal-sim: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"portal-sim: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_portal_sim_arguments(
        argparse.ArgumentParser(prog="portal-sim", description="Simulate the Australian Synchrotron portal API.")
    )
    return run_portal_sim(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
