"""The transfer layer's exceptions, and what rsync's exit codes mean to an admin.

An error's message says what failed, what rsync's exit code means and what to
fix, and ends with the last lines rsync and ssh wrote to stderr (never a line
that could hold key material).
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .endpoint import SshEndpoint
    from .process import RsyncResult

# How many of rsync's last stderr lines an error message quotes.
_ERROR_STDERR_LINES = 8

RSYNC_EXIT_MEANINGS: dict[int, str] = {
    0: "success",
    1: "syntax or usage error",
    2: "protocol incompatibility",
    3: "errors selecting input/output files or folders",
    4: "requested action not supported (or refused by the server)",
    5: "error starting the client-server protocol",
    6: "daemon unable to append to its log file",
    10: "error in socket I/O",
    11: "error in file I/O",
    12: "error in the rsync protocol data stream",
    13: "errors with program diagnostics",
    14: "error in IPC code",
    20: "received SIGUSR1 or SIGINT",
    21: "some error returned by waitpid()",
    22: "error allocating core memory buffers",
    23: "partial transfer due to error",
    24: "partial transfer due to vanished source files",
    25: "the --max-delete limit stopped deletions",
    30: "timeout in data send/receive",
    35: "timeout waiting for daemon connection",
    255: "ssh failed (or rsync gave an unexplained error)",
}

# What the admin should do about each failure.
_EXIT_HINTS: dict[int, str] = {
    3: "check that the source folder exists on the SFTP host and the destination is writable",
    4: "the server refused an option; the SFTP account may be restricted to read-only rsync",
    5: "check host and ssh-port in config.yml and that the SFTP host is reachable",
    10: "the connection broke; check the network to the SFTP host and retry",
    11: "check free space and permissions under destination-root-path",
    12: "the connection closed unexpectedly; the server may have refused the command (see below) or ssh failed",
    23: "some files could not be read or written (permissions, disk full, or a missing source folder); "
    "the next run retries them",
    24: "files vanished on the source while copying (the beamline may still be writing); the next run retries",
    30: "the SFTP host stopped answering; retry later",
    35: "the SFTP host stopped answering; retry later",
    255: "check host, ssh-port, sftp-username and that key-file is authorised on the SFTP host",
}

_LOGIN_REFUSED_HINT = (
    "the SFTP host refused the login: check sftp-username, and that the public key of key-file is "
    "authorised there (the facility may have revoked it, or the account may have expired)"
)

HOST_KEY_PATTERNS = re.compile(
    r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key verification failed|"
    r"No [A-Z0-9-]+ host key is known for|Host key for .* has changed",
    re.IGNORECASE,
)

# What ssh itself (or PAM through it) prints when the account refuses the login. Only ssh's
# own lines: rsync's "Permission denied (13)" about a file has a number in the brackets.
# rsync exits 255 or 12 after such a line, whichever of ssh's exit and the closed pipe it
# notices first, so the exit code does not tell.
SSH_AUTH_PATTERNS = re.compile(
    r"Permission denied \((?:publickey|password|keyboard-interactive|hostbased|gssapi)|"
    r"Permission denied, please try again|Too many authentication failures|"
    r"account has expired|password has expired",
    re.IGNORECASE,
)


class SshConfigError(ValueError):
    """An SSH setting (host, user, key file, known-hosts file, source root) that cannot work."""


class RsyncError(Exception):
    """rsync failed; `exit_code` is rsync's, the message ends with its last stderr lines."""

    def __init__(self, message: str, *, exit_code: int, stderr_tail: str = "", result: RsyncResult | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
        self.result = result

    @property
    def meaning(self) -> str:
        return exit_meaning(self.exit_code)

    @property
    def login_refused(self) -> bool:
        """Whether ssh said the SFTP host refused the login (a revoked key, an expired account)."""
        return SSH_AUTH_PATTERNS.search(self.stderr_tail) is not None


FILE_IO_EXIT = 11  # rsync's "error in file I/O": its exit code when it cannot make a folder


def file_io_error(what: str) -> RsyncError:
    """The error rsync would have met writing the destination, met before rsync started."""
    return RsyncError(f"{what}: {_EXIT_HINTS[FILE_IO_EXIT]}", exit_code=FILE_IO_EXIT)


class HostKeyError(RsyncError):
    """ssh refused the SFTP host's key: it is unknown or differs from the pinned one."""


class TransferTerminated(RsyncError):
    """The transfer was stopped by `terminate_all_transfers` (service shutdown)."""


def exit_meaning(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return RSYNC_EXIT_MEANINGS.get(code, "unknown rsync exit code")


def redact(lines: Iterable[str]) -> list[str]:
    # ssh never prints key material, but keep that true even for odd failures.
    return [line for line in lines if "PRIVATE KEY" not in line]


def error_for(
    exit_code: int,
    stderr_lines: list[str],
    *,
    description: str,
    host_key_problem: bool,
    terminated: bool,
    endpoint: SshEndpoint | None,
    result: RsyncResult,
) -> RsyncError:
    """The exception for a failed run: TransferTerminated, HostKeyError or RsyncError, with a hint and stderr."""
    relevant = [line for line in redact(stderr_lines) if "Could not chdir to home directory" not in line]
    tail = "\n".join(relevant[-_ERROR_STDERR_LINES:])
    shown = "\nrsync/ssh said:\n  " + "\n  ".join(relevant[-_ERROR_STDERR_LINES:]) if relevant else ""
    what = description or "rsync"
    if terminated:
        return TransferTerminated(
            f"{what} was stopped by a shutdown request (rsync exit {exit_code}); the next run resumes it",
            exit_code=exit_code,
            stderr_tail=tail,
            result=result,
        )
    if host_key_problem:
        where = f"{endpoint.host}:{endpoint.port}" if endpoint else "the SFTP host"
        pinned = (
            f"known-hosts-file {endpoint.known_hosts_file}"
            if endpoint and endpoint.known_hosts_file
            else "the default ~/.ssh/known_hosts (set known-hosts-file in config.yml to pin it)"
        )
        return HostKeyError(
            f"{what} failed: the SSH host key of {where} is unknown or does not match {pinned}. "
            f"Check known-hosts-file: if the facility announced a new host key, add it "
            f"(`ssh-keyscan -p PORT HOST` and verify the fingerprint with them); otherwise do not connect, "
            f"the connection may be intercepted.{shown}",
            exit_code=exit_code,
            stderr_tail=tail,
            result=result,
        )
    hint = _LOGIN_REFUSED_HINT if SSH_AUTH_PATTERNS.search(tail) else _EXIT_HINTS.get(exit_code)
    return RsyncError(
        f"{what} failed: rsync exit code {exit_code} ({exit_meaning(exit_code)})"
        + (f": {hint}" if hint else "")
        + shown,
        exit_code=exit_code,
        stderr_tail=tail,
        result=result,
    )
