"""One deadline per request: connecting, the headers and the whole body.

Socket timeouts alone are per read, so a portal that drips bytes slowly could keep a thread
past any timeout. The client's session mounts `WatchedAdapter`, whose pools tell the watchdog
which connection each thread is using; `deadline(ends)` starts a timer that shuts that
connection down when `ends` passes, so the thread's read returns at once.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import urllib3
from requests.adapters import HTTPAdapter

# The connection each thread has in flight, so that a watchdog can cut it at the deadline.
_in_flight: dict[int, Any] = {}
_in_flight_lock = threading.Lock()


def _in_flight_now(conn: Any) -> Any:
    """`conn`, noted as the connection the calling thread is using."""
    with _in_flight_lock:
        _in_flight[threading.get_ident()] = conn
    return conn


# Named as urllib3's own pools, whose class name its error messages quote to the admin.
class HTTPConnectionPool(urllib3.HTTPConnectionPool):
    """urllib3's pool, telling the watchdog which connection each thread is using."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        return _in_flight_now(super()._get_conn(timeout))


class HTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    """urllib3's pool, telling the watchdog which connection each thread is using."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        return _in_flight_now(super()._get_conn(timeout))


_WATCHED_POOLS = {"http": HTTPConnectionPool, "https": HTTPSConnectionPool}


class WatchedAdapter(HTTPAdapter):
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


@contextlib.contextmanager
def deadline(ends: float) -> Iterator[None]:
    """Within the block, the calling thread's connection is cut at `ends` (a time.monotonic() instant)."""
    thread_id = threading.get_ident()
    watchdog = threading.Timer(max(0.0, ends - time.monotonic()), _cut, args=(thread_id,))
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()
        with _in_flight_lock:
            _in_flight.pop(thread_id, None)
