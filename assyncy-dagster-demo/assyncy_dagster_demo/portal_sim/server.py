"""The HTTP side of the simulator: a threading server on a real socket that can end its idle
keep-alive connections at stop, a handler that hands every request to the simulator, and the
writing of a JSON answer (pre-encoded visits are sent as they are)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from assyncy_dagster.portal.redaction import ACCESS_TOKEN_IN_URL


class Handler(BaseHTTPRequestHandler):
    """Hands every request to the simulator the server carries (`server.simulator.handle`)."""

    protocol_version = "HTTP/1.1"  # keep-alive, as requests.Session expects
    server_version = "PortalSimulator/1.0"
    timeout = 30  # an idle keep-alive connection does not hold a thread forever
    # Headers and body go out in two writes; with Nagle on, the second waits for a delayed ACK (40 ms).
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self.server.simulator.handle(self, "GET")  # type: ignore[attr-defined]

    def do_POST(self) -> None:
        self.server.simulator.handle(self, "POST")  # type: ignore[attr-defined]

    def do_PUT(self) -> None:
        self.server.simulator.handle(self, "PUT")  # type: ignore[attr-defined]

    do_DELETE = do_PUT

    def log_message(self, format: str, *args: Any) -> None:
        simulator = self.server.simulator  # type: ignore[attr-defined]
        if not simulator.quiet:
            line = format % args
            line = ACCESS_TOKEN_IN_URL.sub(r"\1***", line)  # the product's own mask: no token in the log
            sys.stderr.write(f"{self.address_string()} - {line}\n")


class Server(ThreadingHTTPServer):
    """A threading server that knows its open connections, so that a stop can end the idle ones."""

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


class Encoded:
    """JSON text already built from pre-encoded visits (10,000 of them need no re-encoding)."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


def error(message: str) -> dict[str, Any]:
    return {"meta": {"error_message": message}}


def basic_auth(header: str) -> tuple[str, str] | None:
    if not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, sep, password = decoded.partition(":")
    return (name, password) if sep else None


def send(handler: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
    """`payload` (JSON-able, or Encoded) as the answer, with `status`."""
    text = payload.text if isinstance(payload, Encoded) else json.dumps(payload, ensure_ascii=False)
    send_raw(handler, status, text.encode("utf-8"))


def send_raw(handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
    """`body` as a JSON answer with `status`."""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json; charset=utf-8")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
