"""How every state file is written and how a JSON one is read: durably, and never silently emptied.

`write_atomically` is the one write of the package's state and report files
(ignore.yml, alerted.yml, the canary's and the sensor's JSON files in the
instance's storage, the report's CSV, PNG and HTML): a temporary file beside
the target, written and fsynced, renamed into place, then the folder fsynced.
A reader sees the old content or the new, never half of it, and after a power
cut the file holds one or the other too (a rename that is not fsynced can come
back as an empty file, or as the old one after the new was acted on).

`read_json` is the one reader of the JSON state files. A missing file is the
empty value (nothing recorded yet); a corrupt one (not JSON, empty, or not the
expected shape) is moved aside as `<name>.corrupt-<UTC time>`, with a warning
naming both, and read as empty: the clocks it held restart, but loudly, and the
bytes are kept for whoever wants to know why. ignore.yml is stricter (state.py):
a broken one is refused, since reading it as empty would copy every EPN again.

I/O floor: no Dagster import.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml

# The sync log: every JSON state file belongs to the sync service (sensor, mxsync, canary).
log = logging.getLogger("assyncy.sync")

T = TypeVar("T", dict, list)
# PyYAML's safe loader on libyaml's C parser where PyYAML was built with it: 10x faster than the
# pure-Python one (config.yml is read about ten times in a step, ignore.yml once per EPN of a batch).
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str) -> Any:
    """YAML text as this package reads every file of its own (config.yml, ignore.yml): safely,
    no tags beyond the standard ones; raises yaml.YAMLError naming line and column."""
    return yaml.load(text, Loader=_YAML_LOADER)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for a read-modify-write of `path` (ignore.yml, the fixity findings),
    across threads and processes. The lock is a file beside it: a lock on the state file itself
    would be lost at every rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_atomically(path: Path, data: str | bytes, *, mode: int = 0o644) -> None:
    """Replace `path` with `data` (text is written as UTF-8) so that it survives a crash or power cut.

    A new file gets `mode`; a file being replaced keeps its own. The folder is
    created when missing. On any failure the temporary file is removed and
    `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileNotFoundError):
            mode = path.stat().st_mode & 0o777
        os.chmod(tmp, mode)  # mkstemp makes it 0600 whatever was asked
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    # The rename lives in the folder: without this it may not survive a power cut.
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: object) -> None:
    """Write a JSON state file (private to the service account, like the instance's storage)."""
    write_atomically(path, json.dumps(data, sort_keys=True), mode=0o600)


def read_json(path: Path, empty: T) -> T:
    """The JSON value in `path` when it is of `empty`'s type (dict or list), else `empty`.

    Missing: `empty`, quietly (nothing recorded yet). Unreadable (permissions):
    `empty`, with a warning. Corrupt (not UTF-8 JSON, or another type): moved
    aside as `<name>.corrupt-<UTC time>` with a warning naming both, then `empty`,
    so that the next write starts afresh and the broken bytes are kept."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
            seen = os.fstat(handle.fileno())
    except FileNotFoundError:
        return empty
    except OSError as exc:
        log.warning(f"state file {path} cannot be read ({exc.strerror or exc}); treated as empty")
        return empty
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
        data = _CORRUPT
    if isinstance(data, type(empty)):
        return data
    why = "not JSON" if data is _CORRUPT else f"a JSON {type(data).__name__}, not a {type(empty).__name__}"
    _move_aside(path, seen, why, len(raw))
    return empty


_CORRUPT = object()


def _move_aside(path: Path, seen: os.stat_result, why: str, size: int) -> None:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        now = os.stat(path)
        if (now.st_dev, now.st_ino) != (seen.st_dev, seen.st_ino):
            # A writer replaced it since it was read: the new file is not the corrupt one.
            log.warning(f"state file {path} was corrupt ({why}) but has been rewritten since; read as empty this once")
            return
        os.rename(path, aside)
    except FileNotFoundError:
        log.warning(f"state file {path} was corrupt ({why}) and is gone already (another reader moved it aside)")
        return
    except OSError as exc:
        log.warning(
            f"state file {path} is corrupt ({why}, {size} bytes) and could not be moved aside "
            f"({exc.strerror or exc}); treated as empty, the next write replaces it"
        )
        return
    log.warning(
        f"state file {path} was corrupt ({why}, {size} bytes): moved aside to {aside}; "
        "treated as empty, so what it recorded starts afresh"
    )
