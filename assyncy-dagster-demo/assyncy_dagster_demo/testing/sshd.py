"""A real OpenSSH server on 127.0.0.1 that serves a folder read-only, like the synchrotron's.

`LocalSshd` gives the tests and the demo the same path the production data
takes: ssh with a pinned host key, a key-only account whose ForceCommand is
`rrsync -ro`, and rsync on both ends. No Dagster imports.

rrsync maps a leading `/` in a requested path to the served folder, so a
config whose `source-root` is `/data/mx` reads `<source_root>/data/mx/` on
disk: lay EPN folders out under `beamline_dir("mx")`.
"""

from __future__ import annotations

import ctypes
import fcntl
import getpass
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from assyncy_dagster.logs import tail
from assyncy_dagster.transfer import SshEndpoint, list_command
from assyncy_dagster.transfer.process import stop_group

from .ports import free_port
from .session_log import Session, read_sessions

log = logging.getLogger(__name__)

SSHD = "/usr/sbin/sshd"
RRSYNC = "/usr/bin/rrsync"
DEFAULT_USER = "assyncy-sftp"
_PR_SET_PDEATHSIG = 1
_CHUNK = 1 << 20


class SshdError(RuntimeError):
    """The local sshd could not be started or did not answer; the message ends with its log."""


class _PortTaken(Exception):
    pass


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the kernel SIGTERM sshd if this process dies, even by SIGKILL (Linux).

    Without it, a test run or demo killed hard would leave sshd (in its own
    session, on purpose) running forever. The signal follows the thread that
    started sshd, so start LocalSshd from a thread that outlives it.
    """
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def missing_binaries() -> list[str]:
    """The programs LocalSshd needs that are not installed (empty when all are there)."""
    needed = [
        SSHD,
        RRSYNC,
        shutil.which("ssh") or "ssh",
        shutil.which("ssh-keygen") or "ssh-keygen",
        shutil.which("rsync") or "rsync",
    ]
    return [p for p in needed if not (os.path.isabs(p) and os.access(p, os.X_OK))]


def _ensure_account(name: str) -> str:
    """Create the key-only system account `name` when root; else use the current user."""
    if os.geteuid() != 0:
        current = getpass.getuser()
        log.warning("not root: LocalSshd serves as the current user %s instead of %s", current, name)
        return current
    # Several test processes may start servers at once: one at a time edits /etc/passwd.
    with open("/tmp/assyncy-sshd-account.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "-s", "/bin/sh", name],
                check=True,
                capture_output=True,
                text=True,
            )
        # A fresh account is locked ("!"), and with UsePAM no sshd refuses a locked
        # account even for key logins; "*" means "no password" without the lock.
        if not _account_unlocked(name):
            subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True, text=True)
    return name


def _account_unlocked(name: str) -> bool:
    try:
        with open("/etc/shadow") as shadow:
            return any(line.split(":")[:2] == [name, "*"] for line in shadow)
    except OSError:
        return False


def make_source_tree(root: Path, epn: str, files: Mapping[str, bytes | int]) -> Path:
    """Lay out `<root>/<epn>/` with `files` (relative path -> content, or size for random bytes).

    Folders get mode 755 and files 644 so that the sshd account can read them.
    Returns the EPN folder.
    """
    folder = Path(root) / epn
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    for relative, content in files.items():
        path = folder / relative
        for parent in reversed(path.relative_to(folder).parents):
            d = folder / parent
            d.mkdir(exist_ok=True)
            d.chmod(0o755)
        with open(path, "wb") as fh:
            if isinstance(content, int):
                remaining = content
                while remaining > 0:
                    n = min(remaining, _CHUNK)
                    fh.write(os.urandom(n))
                    remaining -= n
            else:
                fh.write(content)
        path.chmod(0o644)
    return folder


class LocalSshd:
    """An OpenSSH server on 127.0.0.1:<free port> serving `source_root` read-only through rrsync.

    Use as a context manager, or call `start()` and `stop()`. After start:
    `host`, `port`, `user`, `key_file` (client private key), `known_hosts_file`
    (pins this server's fresh host key) and `source_root` (the served folder;
    lay EPNs out under `beamline_dir()`, and take the config keys from
    `config_values()`). A given `workdir` is kept on stop, keys included, so a
    demo can restart the server with the same host key.
    """

    def __init__(
        self,
        *,
        user: str = DEFAULT_USER,
        workdir: Path | None = None,
        startup_timeout: float = 20.0,
        rate_limit_mib: float | None = None,
        record_sessions: bool = False,
    ):
        self.host = "127.0.0.1"
        self.port = 0
        self._wanted_user = user
        self.user = user
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="assyncy-sshd-"))
        self.source_root = self.workdir / "srv"
        self.key_file = self.workdir / "client" / "id_ed25519"
        self.known_hosts_file = self.workdir / "client" / "known_hosts"
        self.host_key_file = self.workdir / "server" / "ssh_host_ed25519_key"
        self.config_file = self.workdir / "server" / "sshd_config"
        self.log_file = self.workdir / "server" / "sshd.log"
        self.pid_file = self.workdir / "server" / "sshd.pid"
        self.authorized_keys_file = self.workdir / "server" / "authorized_keys"
        self.startup_timeout = startup_timeout
        # Cap each ssh connection's data at this many MiB/s, as a WAN link caps each flow.
        self.rate_limit_mib = rate_limit_mib
        # Append each ssh session's start and end, as the host sees them, to `session_log_file`
        # (session_log.py; read back with `sessions()`).
        self.record_sessions = record_sessions
        self.session_log_file = self.workdir / "server" / "sessions.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- layout ---------------------------------------------------------------

    def beamline_dir(self, beamline: str = "mx") -> Path:
        """The on-disk folder that a remote path `/data/<beamline>` means (created, mode 755)."""
        path = self.source_root / "data" / beamline
        path.mkdir(parents=True, exist_ok=True)
        for p in (self.source_root / "data", path):
            p.chmod(0o755)
        return path

    def remote_root(self, beamline: str = "mx") -> str:
        """The `source-root` a config uses to reach `beamline_dir(beamline)`."""
        return f"/data/{beamline}"

    def endpoint(self, beamline: str = "mx") -> SshEndpoint:
        """The endpoint a client uses to read `beamline_dir(beamline)` through this server."""
        return SshEndpoint(
            host=self.host,
            port=self.port,
            user=self.user,
            key_file=self.key_file,
            known_hosts_file=self.known_hosts_file,
            source_root=self.remote_root(beamline),
            connect_timeout_seconds=5,
        )

    def config_values(self, beamline: str = "mx") -> dict[str, object]:
        """The config.yml keys that point the project at this server (for the demo and end-to-end tests)."""
        return {
            "host": self.host,
            "ssh-port": self.port,
            "sftp-username": self.user,
            "key-file": str(self.key_file),
            "known-hosts-file": str(self.known_hosts_file),
            "source-root": self.remote_root(beamline),
        }

    def _check_reachable(self) -> None:
        """sshd reads authorized_keys and rrsync reads the tree as the account: every parent must be searchable."""
        if self.user == getpass.getuser():
            return
        for parent in [self.workdir, *self.workdir.parents]:
            if not parent.stat().st_mode & stat.S_IXOTH:
                raise SshdError(
                    f"{parent} is not searchable by other users (mode {stat.filemode(parent.stat().st_mode)}), "
                    f"so the account {self.user} cannot reach {self.workdir}: use a workdir under /tmp"
                )

    def _prepare(self) -> None:
        for d in (self.workdir, self.source_root, self.workdir / "server", self.workdir / "client"):
            d.mkdir(parents=True, exist_ok=True)
        # The served tree and authorized_keys are read as the account, not root.
        self.workdir.chmod(0o755)
        self.source_root.chmod(0o755)
        (self.workdir / "server").chmod(0o755)
        (self.workdir / "client").chmod(0o700)
        if not self.host_key_file.exists():
            subprocess.run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "assyncy-test-host",
                    "-f",
                    str(self.host_key_file),
                ],
                check=True,
                capture_output=True,
            )
        if not self.key_file.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "assyncy-test-client", "-f", str(self.key_file)],
                check=True,
                capture_output=True,
            )
        self.key_file.chmod(0o600)
        self.authorized_keys_file.write_text(Path(f"{self.key_file}.pub").read_text())
        self.authorized_keys_file.chmod(0o644)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self._check_reachable()

    def _write_config(self) -> None:
        lines = [
            "ListenAddress 127.0.0.1",
            f"Port {self.port}",
            f"HostKey {self.host_key_file}",
            f"PidFile {self.pid_file}",
            f"AuthorizedKeysFile {self.authorized_keys_file}",
            "StrictModes no",
            "UsePAM no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password",
            f"AllowUsers {self.user}",
            "UseDNS no",
            "PrintMotd no",
            "PermitTTY no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "AllowAgentForwarding no",
            "MaxStartups 50:30:200",
            "LogLevel VERBOSE",
            f"ForceCommand {self._forced_command()}",
        ]
        self.config_file.write_text("\n".join(lines) + "\n")
        host_pub = Path(f"{self.host_key_file}.pub").read_text().split()
        self.known_hosts_file.write_text(f"[{self.host}]:{self.port} {host_pub[0]} {host_pub[1]}\n")

    def _forced_command(self) -> str:
        command = f"{RRSYNC} -ro {self.source_root}"
        if self.rate_limit_mib is not None:
            relay = self._server_script("rate_relay.py")
            command = f"/usr/bin/python3 -I {relay} {float(self.rate_limit_mib)} {command}"
        if self.record_sessions:
            # Outermost, so a session's end is when the host has sent its last byte, relay included.
            recorder = self._server_script("session_log.py")
            self.session_log_file.touch()
            self.session_log_file.chmod(0o666)  # appended to by the account, not root
            command = f"/usr/bin/python3 -I {recorder} {self.session_log_file} {command}"
        return command

    def _server_script(self, name: str) -> Path:
        """A copy of this package's script `name` where the account's python3 can read it."""
        script = self.workdir / "server" / name
        shutil.copyfile(Path(__file__).with_name(name), script)
        script.chmod(0o644)
        return script

    def sessions(self) -> list[Session]:
        """Every ssh session so far, as the host saw it (needs `record_sessions=True`)."""
        if not self.record_sessions:
            raise SshdError("this sshd does not record its sessions: start it with record_sessions=True")
        return read_sessions(self.session_log_file)

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> LocalSshd:
        """Start sshd and wait until a real rsync listing through it works."""
        missing = missing_binaries()
        if missing:
            raise SshdError(
                f"cannot start a local sshd: missing {', '.join(missing)} (apt-get install openssh-server rsync)"
            )
        self.user = _ensure_account(self._wanted_user)
        self._prepare()
        for attempt in range(3):
            self.port = free_port()
            self._write_config()
            check = subprocess.run([SSHD, "-t", "-f", str(self.config_file)], capture_output=True, text=True)
            if check.returncode != 0:
                self.stop()
                raise SshdError(f"sshd rejected {self.config_file}: {check.stderr.strip()}")
            with open(self.log_file, "ab") as log_fh:
                self._proc = subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(self.config_file)],
                    stdin=subprocess.DEVNULL,
                    stdout=log_fh,
                    stderr=log_fh,
                    start_new_session=True,
                    preexec_fn=_die_with_parent(),
                )
            try:
                self._wait_ready()
            except _PortTaken:
                # Another process took the free port before sshd bound it: try another.
                self._kill()
                if attempt == 2:
                    self.stop()
                    raise SshdError(f"sshd could not bind a free port; log:\n{tail(self.log_file)}") from None
                continue
            except BaseException:
                self.stop()
                raise
            log.info("local sshd on %s:%d serving %s as %s", self.host, self.port, self.source_root, self.user)
            return self
        raise AssertionError("unreachable")

    def _probe(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list_command(self.endpoint(), "/", recursive=False, io_timeout_seconds=10),
            capture_output=True,
            text=True,
            timeout=15,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int | None:
        """The listening sshd's PID while it runs: every session it serves is a process below it."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while not _port_open(self.port):
            if self._proc.poll() is not None:
                if "Address already in use" in tail(self.log_file, 5):
                    raise _PortTaken()
                raise SshdError(f"sshd exited with code {self._proc.returncode}; log:\n{tail(self.log_file)}")
            if time.monotonic() > deadline:
                raise SshdError(
                    f"sshd did not open port {self.port} within {self.startup_timeout}s; log:\n{tail(self.log_file)}"
                )
            time.sleep(0.02)
        # The port is open, so sshd is ready: a failing probe is a real problem, not a race.
        try:
            probe = self._probe()
        except subprocess.TimeoutExpired:
            raise SshdError(
                f"rsync --list-only through sshd on port {self.port} timed out; log:\n{tail(self.log_file)}"
            ) from None
        if probe.returncode != 0:
            raise SshdError(
                f"rsync --list-only through sshd on port {self.port} exited {probe.returncode}: "
                f"{probe.stderr.strip()[-500:]}\nsshd log:\n{tail(self.log_file)}"
            )

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_group(proc, signal.SIGTERM, grace=5)

    def stop(self) -> None:
        """Kill sshd's process group and remove the temporary folder (if this object made it)."""
        self._kill()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalSshd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
