"""A real PostgreSQL server (Debian's `postgresql` binaries) on a free loopback port, for
the PostgreSQL storage tests, the scale-out tests and the scale-out benchmark. No Dagster imports.

A fresh cluster in a temporary folder, with database `dagster` owned by account
`assyncy` (password authentication over TCP, as a production server would ask);
stopped and removed afterwards.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from .ports import free_port

SERVICE_ACCOUNT = "postgres"  # Debian's postgresql package creates it; PostgreSQL refuses to run as root


class PostgresUnavailable(RuntimeError):
    """The server binaries or the service account are missing: the message says what to install."""


@dataclass(frozen=True)
class PostgresServer:
    """Where the test server listens and the database and account made for the tests."""

    host: str
    port: int
    database: str
    username: str
    password: str
    socket_dir: Path
    bin_dir: Path

    def create_database(self, name: str) -> PostgresServer:
        """A new empty database owned by the same account: one per test keeps their runs apart."""
        _run([*self._psql(), "-c", f'CREATE DATABASE "{name}" OWNER {self.username}'], cwd=self.socket_dir)
        return replace(self, database=name)

    def _psql(self) -> list[str]:
        # Over the Unix socket, where the cluster trusts its superuser.
        return [
            str(self.bin_dir / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ]


def postgres_bin_dir() -> Path | None:
    """The folder of initdb/postgres: Debian keeps them in /usr/lib/postgresql/<version>/bin."""

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(part) for part in Path(path).parts[4].split(".") if part.isdigit())

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_account() -> dict:
    """Popen arguments that run a command as the PostgreSQL account when we are root."""
    if os.geteuid() != 0:
        return {}
    return {"user": SERVICE_ACCOUNT, "group": pwd.getpwnam(SERVICE_ACCOUNT).pw_gid, "extra_groups": []}


def _run(argv: list[str], cwd: Path, secret: str = "") -> None:
    done = subprocess.run(argv, check=False, cwd=cwd, capture_output=True, text=True, timeout=120, **_as_account())
    if done.returncode != 0:
        output = done.stdout + done.stderr
        shown = output.replace(secret, "********") if secret else output
        raise RuntimeError(f"{Path(argv[0]).name} failed ({done.returncode}):\n{shown}")


def _wait_ready(bin_dir: Path, proc: subprocess.Popen, port: int, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with status {proc.returncode}:\n{log.read_text(errors='replace')}")
        ready = subprocess.run(
            [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)], check=False, capture_output=True
        )
        if ready.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(
        f"postgres did not accept connections within {timeout:.0f} s:\n{log.read_text(errors='replace')}"
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    # SIGINT is PostgreSQL's "fast" shutdown: sessions are ended, the data is flushed.
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextmanager
def local_postgres() -> Iterator[PostgresServer]:
    """A fresh PostgreSQL cluster in a temporary folder; raises PostgresUnavailable when
    this machine cannot run one."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise PostgresUnavailable("PostgreSQL needs the server binaries (apt-get install postgresql)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVICE_ACCOUNT)
        except KeyError:
            raise PostgresUnavailable(
                f"PostgreSQL refuses to run as root and there is no {SERVICE_ACCOUNT!r} account"
            ) from None

    # Under /tmp rather than pytest's tmp_path, which is private to root.
    workdir = Path(tempfile.mkdtemp(prefix="assyncy-pg-"))
    proc = None
    try:
        data, sockets, log = workdir / "data", workdir / "run", workdir / "postgres.log"
        sockets.mkdir()
        log.touch()
        if os.geteuid() == 0:
            account = pwd.getpwnam(SERVICE_ACCOUNT)
            for path in (workdir, sockets, log):
                os.chown(path, account.pw_uid, account.pw_gid)
        _run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-sync",
            ],
            cwd=workdir,
        )
        port = free_port()
        with open(log, "ab") as log_out:
            proc = subprocess.Popen(
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(port),
                    "-k",
                    str(sockets),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                ],
                cwd=workdir,
                stdout=log_out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **_as_account(),
            )
        _wait_ready(bin_dir, proc, port, log)

        server = PostgresServer(
            host="127.0.0.1",
            port=port,
            database="dagster",
            username="assyncy",
            password=secrets.token_urlsafe(18),
            socket_dir=sockets,
            bin_dir=bin_dir,
        )
        _run(
            [*server._psql(), "-c", f"CREATE ROLE assyncy LOGIN PASSWORD '{server.password}'"],
            cwd=workdir,
            secret=server.password,
        )
        _run([*server._psql(), "-c", "CREATE DATABASE dagster OWNER assyncy"], cwd=workdir)
        yield server
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)
