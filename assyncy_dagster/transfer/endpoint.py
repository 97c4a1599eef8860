"""The SSH side of a transfer: where the SFTP host is and the `ssh` command that reaches it.

Every value that ends up on the ssh command line is checked when the endpoint
is made, so a hostile or mistyped setting is refused with the setting named
instead of being passed to ssh.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import SshConfigError

if TYPE_CHECKING:
    from ..config import Settings

SSH = "ssh"
# Characters that rsync's -e splitting, ssh's option parser or ssh's %-token
# expansion would change: refuse them in paths rather than guess at quoting.
_UNSAFE_PATH_CHARS = re.compile(r"[\s'\"%\\]|^~")
_HOST = re.compile(r"[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]", re.ASCII)
_USER = re.compile(r"[A-Za-z0-9_.@+-]+", re.ASCII)


def _check_path(path: Path, setting: str) -> None:
    text = str(path)
    if _UNSAFE_PATH_CHARS.search(text):
        raise SshConfigError(
            f"{setting} {text!r} contains a space, quote, backslash, '%' or leading '~', which rsync's -e "
            f"option or ssh would misread: move the file to a plain absolute path"
        )


@dataclass(frozen=True)
class SshEndpoint:
    """Where and how to reach the SFTP host: everything `ssh` needs, and the served root."""

    host: str
    port: int
    user: str
    key_file: Path
    known_hosts_file: Path | None
    source_root: str
    connect_timeout_seconds: int = 30
    server_alive_interval_seconds: int = 15
    # The control socket of a connection shared by a run's transfers (connection.py), or None:
    # every ssh then makes its own connection.
    control_path: Path | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not _HOST.fullmatch(self.host) or self.host.startswith("-"):
            raise SshConfigError(f"host {self.host!r} is not a plain host name or address")
        if not isinstance(self.user, str) or not _USER.fullmatch(self.user) or self.user.startswith("-"):
            raise SshConfigError(f"SFTP user {self.user!r} is not a plain user name (letters, digits, . _ @ + -)")
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise SshConfigError(f"ssh-port {self.port!r} is not a TCP port (1-65535)")
        object.__setattr__(self, "key_file", Path(self.key_file))
        _check_path(self.key_file, "key-file")
        if self.known_hosts_file is not None:
            object.__setattr__(self, "known_hosts_file", Path(self.known_hosts_file))
            _check_path(self.known_hosts_file, "known-hosts-file")
        if self.control_path is not None:
            object.__setattr__(self, "control_path", Path(self.control_path))
            _check_path(self.control_path, "the shared connection's control socket")
        root = self.source_root
        if (
            not isinstance(root, str)
            or not root.startswith("/")
            or ".." in root.split("/")
            or any(ord(c) < 32 for c in root)
        ):
            raise SshConfigError(f"source-root {root!r} must be an absolute remote path without '..', e.g. /data/mx")

    @classmethod
    def from_settings(cls, settings: Settings) -> SshEndpoint:
        """The endpoint config.yml describes (`host`, `ssh-port`, `sftp-username`, `key-file`, ...)."""
        return cls(
            host=settings.host,
            port=settings.ssh_port,
            user=settings.sftp_user,
            key_file=Path(settings.key_file),
            known_hosts_file=Path(settings.known_hosts_file) if settings.known_hosts_file else None,
            source_root=settings.remote_root,
        )

    def check_files(self) -> None:
        """Raise SshConfigError naming the key or known-hosts file when it is missing or unreadable."""
        for path, setting in ((self.key_file, "key-file"), (self.known_hosts_file, "known-hosts-file")):
            if path is None:
                continue
            if not path.is_file():
                raise SshConfigError(f"{setting} {path} does not exist (or is not a file): fix {setting} in config.yml")
            if not os.access(path, os.R_OK):
                raise SshConfigError(f"{setting} {path} is not readable by this user: fix its permissions")

    def ssh_command(self) -> list[str]:
        """The ssh argv: key-only, non-interactive, host key checked strictly; through the shared
        connection when there is one (`ControlMaster=no`: where its socket is missing, ssh connects
        on its own, so sharing never becomes a way to fail)."""
        cmd = self._own_connection()
        if self.control_path is not None:
            cmd += ["-o", "ControlMaster=no", "-o", f"ControlPath={self.control_path}"]
        return cmd

    def master_command(self, control_path: Path) -> list[str]:
        """The ssh argv of a shared connection's master (connection.py): authenticated as every
        transfer is, it runs no command (`-N`) and serves sessions on `control_path` until stopped
        (`ControlPersist=no`: it stays this process's child, in the foreground)."""
        _check_path(control_path, "the shared connection's control socket")
        return [
            *self._own_connection(),
            "-N",
            "-o",
            "ControlMaster=yes",
            "-o",
            f"ControlPath={control_path}",
            "-o",
            "ControlPersist=no",
            "-l",
            self.user,
            self.host.strip("[]"),  # rsync's spelling of an IPv6 address is not ssh's
        ]

    def _own_connection(self) -> list[str]:
        cmd = [
            SSH,
            "-i",
            str(self.key_file),
            "-p",
            str(self.port),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
        ]
        if self.known_hosts_file is not None:
            # Pin to this file alone: a stale system-wide entry must not vouch for the host.
            cmd += ["-o", f"UserKnownHostsFile={self.known_hosts_file}", "-o", "GlobalKnownHostsFile=/dev/null"]
        cmd += [
            "-o",
            f"ConnectTimeout={self.connect_timeout_seconds}",
            "-o",
            f"ServerAliveInterval={self.server_alive_interval_seconds}",
            "-o",
            "ServerAliveCountMax=4",
        ]
        return cmd

    def rsync_shell(self) -> str:
        """`ssh_command()` as the single string rsync's `-e` wants.

        rsync splits that string on spaces and strips quotes, so every part must
        be free of both; `_check_path` refused such paths when the endpoint was made.
        """
        parts = self.ssh_command()
        for part in parts:
            if any(c.isspace() or c in "'\"" for c in part):
                raise SshConfigError(f"ssh argument {part!r} cannot be passed through rsync -e")
        return " ".join(parts)

    def remote(self, path: str) -> str:
        """`user@host:path`, the remote spec rsync takes."""
        return f"{self.user}@{self.host}:{path}"

    def root_path(self) -> str:
        """The source root with the trailing slash that makes rsync list its contents."""
        return self.source_root.rstrip("/") + "/"
