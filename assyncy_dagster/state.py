"""State files an admin can read and edit: ignore.yml and alerted.yml.

Both keep the seed's shape, a YAML mapping with one sorted list of EPNs
(`previouslySynched` in ignore.yml, `alerted` in alerted.yml). Every update is
a read-modify-write under an exclusive lock, written with
`statefiles.write_atomically` (fsynced, renamed into place), so concurrent runs,
a crash mid-write and a power cut never lose an entry. A file that is not valid
YAML or not of this shape is refused with an error naming it, never read as
empty: an empty ignore.yml would copy every EPN again. No Dagster imports.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import yaml

from .statefiles import load_yaml, locked, write_atomically

IGNORE_KEY = "previouslySynched"
ALERTED_KEY = "alerted"


class StateFileError(Exception):
    """A state file that cannot be read or written; the message names it."""


def _sort_key(epn: str) -> tuple[int, str]:
    match = re.fullmatch(r"([0-9]+)(.*)", epn)
    return (int(match.group(1)), match.group(2)) if match else (-1, epn)


# Read as empty, a broken ignore.yml would have every EPN copied again: the admin repairs it.
_FIX = " (repair or restore it by hand; it is not read as empty)"


def _read(path: Path, key: str) -> tuple[dict, list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, []
    except OSError as exc:
        raise StateFileError(f"{path}: cannot read: {exc}") from None
    except UnicodeDecodeError as exc:
        raise StateFileError(f"{path}: not UTF-8 text{_FIX}: {exc}") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise StateFileError(f"{path}: not valid YAML{_FIX}: {exc}") from None
    if data is None:
        # What a crash in the middle of an in-place rewrite (the old tool's) leaves behind.
        raise StateFileError(f"{path}: empty{_FIX}; if nothing is recorded yet, write `{key}: []` into it")
    if not isinstance(data, dict):
        raise StateFileError(f"{path}: expected a mapping with a {key!r} list{_FIX}")
    entries = data.get(key) or []
    if not isinstance(entries, list):
        raise StateFileError(f"{path}: {key!r} must be a list of EPNs{_FIX}")
    return data, [str(e) for e in entries]


def read_epns(path: Path, key: str = IGNORE_KEY) -> set[str]:
    """The EPNs listed under `key` (empty when the file does not exist yet)."""
    return set(_read(Path(path), key)[1])


def add_epns(path: Path, epns: Iterable[str], key: str = IGNORE_KEY) -> list[str]:
    """Add EPNs to the list under `key` atomically; return the ones that were new.

    A state file that is a symlink (an admin's link to a shared copy) is updated
    through the link: the link is resolved once and the new file is renamed into
    place beside its target, so the link stays and points at the new content."""
    path = Path(os.path.realpath(path))
    wanted = list(dict.fromkeys(epns))
    with locked(path):
        data, current = _read(path, key)
        new = [e for e in wanted if e not in set(current)]
        if not new:
            return []
        data[key] = sorted(set(current) | set(new), key=_sort_key)
        write_atomically(path, "---\n" + yaml.safe_dump(data, default_flow_style=False, sort_keys=False))
    return new
