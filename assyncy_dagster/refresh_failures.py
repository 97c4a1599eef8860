"""A refresh that keeps failing (expired password, revoked key, changed host key): since when the
portal or SFTP-host refreshes have failed, what failed, and how, in the admin's words.

The facts' refresh records a failure and clears it at the next good one; the stuck canary
reports it after `stuck-after-hours`. One small JSON file in the instance's storage, written
and read through statefiles.py, secrets masked. No e-mail here: gathering facts loads none.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from pathlib import Path

import dagster as dg

from .config import Settings
from .logs import SecretMaskingFilter
from .portal.errors import PortalAuthError
from .statefiles import read_json, write_json
from .transfer import RsyncError
from .transfer.errors import HostKeyError

REFRESH_FAILURE_FILE = "epn_sensor_refresh_failure.json"
MAX_ERROR_CHARS = 300


def failure_kind(what: str, exc: BaseException) -> str:
    """What kind of refresh failure `exc` is, in the admin's words."""
    if isinstance(exc, PortalAuthError):
        return "portal authentication"
    if isinstance(exc, HostKeyError):
        return "SSH host key"
    if isinstance(exc, RsyncError) and exc.login_refused:
        return "SSH authentication"
    if isinstance(exc, TimeoutError):
        return f"{what} not answering"
    return f"{what} unavailable"


def short_error(text: str, settings: Settings) -> str:
    """One line, secrets masked, at most MAX_ERROR_CHARS."""
    line = " ".join(SecretMaskingFilter(settings.secrets()).mask(str(text)).split())
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 6].rstrip() + " [...]"


def record_refresh_failure(
    path: Path,
    what: str,
    exc: BaseException,
    now: datetime,
    settings: Settings,
    since: float | None = None,
) -> float:
    """Note a failed refresh: since when refreshes have failed (`since`, else the file's,
    else now), what failed and the error. Returns since when."""
    before = read_json(path, {})
    stamp = now.timestamp()
    if since is None:
        previous = before.get("since")
        since = previous if isinstance(previous, (int, float)) else stamp
    write_json(
        path,
        {
            "since": since,
            "last_failed_at": stamp,
            "what": what,
            "kind": failure_kind(what, exc),
            "error": short_error(str(exc), settings),
        },
    )
    return float(since)


def clear_refresh_failure(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def refresh_failure_file(instance: dg.DagsterInstance) -> Path:
    return Path(instance.storage_directory()) / REFRESH_FAILURE_FILE
