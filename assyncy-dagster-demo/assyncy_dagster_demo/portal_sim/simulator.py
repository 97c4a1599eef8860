"""`PortalSimulator`: the portal API's endpoints, tokens, switchable faults and request counts, served
by server.py from the visits data.py read (the API it serves: see the package's docstring)."""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .data import (
    DEFAULT_TIMEZONE,
    DEFAULT_TOKEN_TTL,
    Equipment,
    ServedVisit,
    SimulatorDataError,
    base_digits,
    load_data,
    parse_equipment,
    zone,
)
from .server import Encoded, Handler, Server, basic_auth, error, send, send_raw

_EQUIPMENT_PATH = re.compile(r"/api/v1/equipment/(\d+)(/visits|/proposals)?/?")
_ALLOCATION_PATH = re.compile(r"/api/v1/proposalAllocations/(\d+)/visits/?")
_FAULT_KEYS = ("fail_next", "status", "delay_seconds", "malformed_next", "body_next", "body", "down", "path")
_MALFORMED_BODY = b'{"data": {"visits": [{"id": 1, "epn": "12282a", "start_'


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
        self.zone = zone(raw.get("timezone", DEFAULT_TIMEZONE))
        self.now = (now or datetime.now(self.zone)).replace(microsecond=0)
        if self.now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        ttl = token_ttl if token_ttl is not None else raw.get("token-ttl-seconds", DEFAULT_TOKEN_TTL)
        if not isinstance(ttl, (int, float)) or ttl <= 0:
            raise SimulatorDataError(f"{name}: token-ttl-seconds must be a positive number, got {ttl!r}")
        self.token_ttl = float(ttl)
        self.equipment = parse_equipment(raw, name, self.now, strict)
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
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> PortalSimulator:
        """Listen and serve in a background thread; returns self."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = Server((self.host, self.port), Handler)
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

    def handle(self, handler: Handler, method: str) -> None:
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
            send_raw(handler, status, payload)
            return
        try:
            status, payload = self._route(handler, method, path, query, body)
        except Exception as exc:  # a simulator bug must answer 500, not hang the client
            status, payload = 500, {"meta": {"error_message": f"simulator error: {type(exc).__name__}"}}
        send(handler, status, payload)

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

    def _control(self, handler: Handler, method: str, path: str, body: bytes) -> None:
        route = (method, path.rstrip("/"))
        if route == ("POST", "/_sim/faults"):
            try:
                changes = json.loads(body or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("expected a JSON object")
                send(handler, 200, {"faults": self.set_faults(**changes)})
            except ValueError as exc:
                send(handler, 400, {"meta": {"error_message": str(exc)}})
        elif route == ("GET", "/_sim/faults"):
            send(handler, 200, {"faults": self.faults()})
        elif route == ("POST", "/_sim/expire-tokens"):
            send(handler, 200, {"expired": self.expire_tokens()})
        elif route == ("GET", "/_sim/stats"):
            send(handler, 200, self.stats())
        elif route == ("POST", "/_sim/reset-stats"):
            self.reset_stats()
            send(handler, 200, self.stats())
        else:
            send(handler, 404, {"meta": {"error_message": f"no control endpoint {method} {path}"}})

    def _route(
        self, handler: Handler, method: str, path: str, query: dict[str, list[str]], body: bytes
    ) -> tuple[int, Any]:
        if path.rstrip("/") == "/api/v1/oauth/token":
            if method != "POST":
                return 405, error("Method not allowed: use POST")
            return self._token(handler, body)
        match = _EQUIPMENT_PATH.fullmatch(path)
        allocation = _ALLOCATION_PATH.fullmatch(path)
        if not match and not allocation:
            return 404, error(f"Not found: {path}")
        if method != "GET":
            return 405, error("Method not allowed: use GET")
        ids = self._authorised_ids(handler, query)
        if isinstance(ids, tuple):
            return ids
        if allocation:
            return self._allocation_visits(int(allocation.group(1)), ids)
        assert match is not None  # neither path matched: answered 404 above
        equipment = self.equipment.get(int(match.group(1)))
        if equipment is None:
            return 404, error(f"Equipment {match.group(1)} not found")
        if equipment.id not in ids:
            with self._lock:
                self._stats["forbidden"] += 1
            return 403, error(f"This access token does not grant access to equipment {equipment.id}")
        kind = match.group(2)
        if kind == "/visits":
            return self._visits(equipment, query)
        if kind == "/proposals":
            return 200, {"data": {"proposals": _proposals(equipment.visits)}}
        return 200, {"data": {"equipment": {"id": equipment.id, "name": equipment.name}}}

    def _token(self, handler: Handler, body: bytes) -> tuple[int, Any]:
        with self._lock:
            self._stats["token_requests"] += 1
        form = parse_qs(body.decode("utf-8", "replace"))
        field = {k: v[0] for k, v in form.items() if v}
        if field.get("grant_type") != "password":
            return self._auth_failure(400, "Unsupported grant type: use grant_type=password")
        client = basic_auth(handler.headers.get("Authorization", ""))
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
        return status, error(message)

    def _authorised_ids(self, handler: Handler, query: dict[str, list[str]]) -> frozenset[int] | tuple[int, Any]:
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
                return 401, error(message)
            return entry[1]

    def _visits(self, equipment: Equipment, query: dict[str, list[str]]) -> tuple[int, Any]:
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
                return 400, error(f"{key} {text!r} is not an ISO 8601 time")
            window.append(moment if moment.tzinfo else moment.replace(tzinfo=self.zone))
        since, until = window
        chosen = [v.encoded for v in equipment.visits if v.overlaps(since, until)]
        return 200, Encoded('{"data": {"visits": [' + ", ".join(chosen) + "]}}")

    def _allocation_visits(self, allocation_id: int, ids: frozenset[int]) -> tuple[int, Any]:
        chosen = [
            v.encoded
            for e in self.equipment.values()
            if e.id in ids
            for v in e.visits
            if v.allocation_id == allocation_id
        ]
        if not chosen:
            return 404, error(f"Proposal allocation {allocation_id} not found")
        return 200, Encoded('{"data": {"visits": [' + ", ".join(chosen) + "]}}")


def _proposals(visits: list[ServedVisit]) -> list[dict[str, Any]]:
    proposals: dict[str, dict[str, Any]] = {}
    for visit in visits:
        base = base_digits(visit.epn)
        if base is None:
            continue
        entry = proposals.setdefault(base, {"id": int(base), "number": base, "epns": [], "allocations": []})
        if visit.epn not in entry["epns"]:
            entry["epns"].append(visit.epn)
        allocation = {"id": visit.allocation_id, "equipment_id": visit.equipment_id}
        if allocation not in entry["allocations"]:
            entry["allocations"].append(allocation)
    return list(proposals.values())
