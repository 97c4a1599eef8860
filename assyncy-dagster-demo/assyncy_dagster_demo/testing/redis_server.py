"""A real Redis server (Debian's `redis-server`) on 127.0.0.1, as the Celery broker and
result backend of the scale-out tests and benchmark. No Dagster imports.

Nothing is persisted (`--save ''`, `--appendonly no`), a password is required as a
production broker's would be, and the server runs in its own session so that it
is stopped with everything it started.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from assyncy_dagster.logs import tail
from assyncy_dagster.transfer.process import stop_group

from .ports import free_port

REDIS_SERVER = "redis-server"


class RedisUnavailable(RuntimeError):
    """redis-server is not installed or did not start; the message says which."""


class LocalRedis:
    """`with LocalRedis() as redis: redis.url(0)`: a password-protected server on a free port."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.password = secrets.token_urlsafe(18)
        self.workdir: Path | None = None
        self.proc: subprocess.Popen | None = None

    def url(self, database: int = 0) -> str:
        """A redis:// URL for Celery (broker or result backend) on `database` (0-15)."""
        return f"redis://:{self.password}@{self.host}:{self.port}/{database}"

    @property
    def log(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "redis.log"

    def start(self) -> Self:
        binary = shutil.which(REDIS_SERVER)
        if binary is None:
            raise RedisUnavailable("redis-server is not installed (apt-get install redis-server)")
        self.workdir = Path(tempfile.mkdtemp(prefix="assyncy-redis-"))
        self.port = free_port()
        argv = [
            binary,
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--requirepass",
            self.password,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--daemonize",
            "no",
            "--logfile",
            str(self.log),
        ]
        # Its own session: stopped with its group, never by a signal meant for the caller.
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 20) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RedisUnavailable(f"redis-server exited with status {self.proc.returncode}:\n{tail(self.log, 20)}")
            if self.ping():
                return
            time.sleep(0.05)
        self.stop()
        raise RedisUnavailable(f"redis-server did not answer within {timeout:.0f} s:\n{tail(self.log, 20)}")

    def ping(self) -> bool:
        """Whether the server answers an authenticated PING (plain RESP, no client library)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                sock.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
                reply = b""
                while reply.count(b"\r\n") < 2:
                    chunk = sock.recv(256)
                    if not chunk:
                        break
                    reply += chunk
                return reply == b"+OK\r\n+PONG\r\n"
        except OSError:
            return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            stop_group(proc, signal.SIGTERM, grace=10)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
