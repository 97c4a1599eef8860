"""Fixity at home: re-hash a recorded EPN against its manifest, and remember what was found.

A recorded EPN's manifest (`transfer/bag.py`, beside `data/`) holds every file's
size, mtime and, where rsync's sender computed one, its content checksum.
`audit_epn` reads each such file again at home and compares: a file whose
content no longer hashes to the recorded checksum at the same size and mtime is
*corrupt* (bit rot, a bad disk, a careless edit that restored the mtime); a
file that is gone is *missing*; a file whose size or mtime differs, or a
symlink whose target differs, was *changed at home*. Files recorded without a
checksum (brought home by the old tool or an earlier version) are checked by
size and mtime only and counted as *unchecked*.

The audit reads at most `max_mib_per_second` (it sleeps between chunks to stay
under it): it shares the disks with the transfers and the users, and its CPU is
bounded by the same figure, since hashing costs a fixed amount of CPU per byte.

What an audit finds is kept per EPN in a small JSON file in the instance's
storage (`fixity_findings.json`), read by the repatriation report (state
`corrupt`) and by the repair: the next `epn_data` materialisation of the EPN
sets the mtime of every file found to 1 s after the epoch (`mark_for_refetch`),
so that rsync's quick check (size and mtime) fetches it again, checks its
whole-file checksum, and records it anew; once the EPN is recorded again its
findings are cleared.

I/O floor: no Dagster import.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import xxhash

from .statefiles import locked, read_json, write_json
from .transfer.bag import PAYLOAD, Recorded
from .transfer.manifests import Kind

FINDINGS_FILE = "fixity_findings.json"
# One buffer, reused, keeps the audit's memory flat whatever the file sizes. 1 MiB reads make the per-call
# cost (a syscall, a hash update) negligible, yet the chunk still sits in the CPU's cache when it is hashed
# just after the kernel copied it there: measured here on cached files, 1 MiB took 0.17 s of CPU per GiB,
# 8 MiB 0.19-0.21 s (xxhsum -H2: 0.17 s). The kernel's read-ahead (POSIX_FADV_SEQUENTIAL) keeps disks busy.
CHUNK_BYTES = 1024 * 1024
MIB = 1024 * 1024
# What mark_for_refetch sets a file's mtime to: never a real frame's, so rsync's quick check always differs.
REFETCH_MTIME = 1


class FixityError(Exception):
    """An audit that cannot run (an algorithm this tool cannot compute); the message says why."""


class _Hasher(Protocol):
    def update(self, data: Any, /) -> None: ...

    def hexdigest(self) -> str: ...


def _hasher(algorithm: str) -> Callable[[], _Hasher]:
    """The hash the manifest's checksums were computed with: rsync's xxh128 (XXH3, 128 bits, as
    `xxhsum -H2` prints it) or MD5."""
    if algorithm == "xxh128":
        return xxhash.xxh3_128
    if algorithm == "md5":
        return hashlib.md5
    raise FixityError(f"the manifest's checksums are {algorithm!r}, which this tool cannot compute (xxh128, md5)")


def problem_list(corrupt: Iterable[str], missing: Iterable[str], changed: Iterable[str]) -> list[tuple[str, str]]:
    """(path, problem) of every file an audit found, sorted by path: the words the check and the report use."""
    found = [(p, "corrupt") for p in corrupt]
    found += [(p, "missing") for p in missing]
    found += [(p, "changed at home") for p in changed]
    return sorted(found)


@dataclass
class Audit:
    """What one audit of one EPN found. Paths are relative to `data/`."""

    algorithm: str
    corrupt: list[str] = field(default_factory=list)  # content differs at the same size and mtime
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # size, mtime or a symlink's target differs
    verified: int = 0  # files whose content hashed to the recorded checksum
    unchecked: int = 0  # files recorded without a checksum: size and mtime only
    bytes_read: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.corrupt or self.missing or self.changed)

    @property
    def mib_per_second(self) -> float:
        return round(self.bytes_read / MIB / self.seconds, 1) if self.seconds > 0 else 0.0

    def problems(self) -> list[tuple[str, str]]:
        """(path, problem) of every file found, sorted by path."""
        return problem_list(self.corrupt, self.missing, self.changed)

    def summary(self, limit: int = 20) -> str:
        counts = f"{self.verified} file(s) verified by content ({self.algorithm}), {self.unchecked} by size only"
        if self.ok:
            return f"intact: {counts}"
        found = [(len(self.corrupt), "corrupt"), (len(self.missing), "missing"), (len(self.changed), "changed")]
        lines = [", ".join(f"{n} {what}" for n, what in found if n) + f" at home; {counts}"]
        problems = self.problems()
        lines += [f"  {problem}: {path}" for path, problem in problems[:limit]]
        if len(problems) > limit:
            lines.append(f"  and {len(problems) - limit} more")
        return "\n".join(lines)


class _Pacer:
    """Sleeps so that the bytes read since the start never run ahead of `mib_per_second`."""

    def __init__(self, mib_per_second: float | None) -> None:
        self.bytes_per_second = mib_per_second * MIB if mib_per_second else None
        self.started = time.monotonic()
        self.done = 0

    def read(self, size: int) -> None:
        self.done += size
        if self.bytes_per_second is None:
            return
        ahead = self.done / self.bytes_per_second - (time.monotonic() - self.started)
        if ahead > 0:
            time.sleep(ahead)


def _inside(data_folder: Path, relative: str, folders: dict[str, bool] | None = None) -> Path | None:
    """The file's path at home, or None when the recorded path, or a folder on its way at home,
    leads out of `data/` (a hand-edited manifest, a folder replaced by a symlink): never read or
    touched. `folders` remembers each folder's verdict within one audit (many files share one)."""
    parts = relative.split("/")
    if relative.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return None
    path = data_folder / relative
    folder = "/".join(parts[:-1])
    inside = folders.get(folder) if folders is not None else None
    if inside is None:
        parent, top = os.path.realpath(path.parent), os.path.realpath(data_folder)
        inside = parent == top or parent.startswith(top + os.sep)
        if folders is not None:
            folders[folder] = inside
    return path if inside else None


def audit_epn(
    epn_folder: Path,
    recorded: Recorded,
    *,
    max_mib_per_second: float | None,
) -> Audit:
    """Compare the EPN's `data/` with its recorded manifest, reading every file that has a checksum.

    `max_mib_per_second` bounds the read rate (None: as fast as the disk and the CPU go). Raises
    FixityError when the manifest's algorithm is not one this tool computes."""
    new_hash = _hasher(recorded.algorithm)
    data_folder = Path(epn_folder) / PAYLOAD
    audit = Audit(recorded.algorithm)
    pacer = _Pacer(max_mib_per_second)
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    folders: dict[str, bool] = {}
    started = time.monotonic()
    for relative in sorted(recorded.tree):
        entry = recorded.tree[relative]
        path = _inside(data_folder, relative, folders)
        if entry.kind is Kind.LINK:
            _audit_link(audit, path, relative, entry.target)
            continue
        if entry.kind is not Kind.FILE:
            continue
        try:
            info = path.lstat() if path is not None else None
        except (FileNotFoundError, NotADirectoryError):
            audit.missing.append(relative)
            continue
        except PermissionError:  # a folder on its way made unreadable at home
            audit.changed.append(relative)
            continue
        if info is None or not stat.S_ISREG(info.st_mode):
            audit.changed.append(relative)  # a folder, a link or anything else now stands where the file was
            continue
        if info.st_size != entry.size or (entry.mtime is not None and int(info.st_mtime) != entry.mtime):
            audit.changed.append(relative)
            continue
        if not entry.checksum:
            audit.unchecked += 1
            continue
        assert path is not None
        try:
            digest = _hash_file(path, new_hash(), view, pacer)
        except FileNotFoundError:
            audit.missing.append(relative)  # removed while it was being read
            continue
        except PermissionError:  # its mode changed at home: the service cannot read it any more
            audit.changed.append(relative)
            continue
        except OSError:  # EIO and the like: the disk cannot give the recorded content back
            audit.corrupt.append(relative)
            continue
        audit.bytes_read += info.st_size
        if digest == entry.checksum.lower():
            audit.verified += 1
        else:
            audit.corrupt.append(relative)
    audit.seconds = time.monotonic() - started
    return audit


def _audit_link(audit: Audit, path: Path | None, relative: str, target: str | None) -> None:
    if path is None:
        audit.changed.append(relative)
        return
    try:
        here = os.readlink(path)
    except (FileNotFoundError, NotADirectoryError):
        audit.missing.append(relative)
        return
    except OSError:  # EINVAL: not a symlink any more
        audit.changed.append(relative)
        return
    if here != target:
        audit.changed.append(relative)


def _hash_file(path: Path, hasher: _Hasher, view: memoryview, pacer: _Pacer) -> str:
    # O_NOFOLLOW: the file was checked to be a regular file; a symlink put there since is not followed.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb", buffering=0) as handle:
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # a larger read-ahead
        while True:
            n = handle.readinto(view)
            if not n:
                break
            hasher.update(view[:n])
            pacer.read(n)
    return hasher.hexdigest()


# -- the findings store ---------------------------------------------------------------


@dataclass(frozen=True)
class Findings:
    """What the last audit of one EPN found wrong at home (paths relative to `data/`)."""

    audited_at: float
    corrupt: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    @property
    def paths(self) -> list[str]:
        return sorted({*self.corrupt, *self.missing, *self.changed})

    def problems(self) -> list[tuple[str, str]]:
        """(path, problem) of every file found, sorted by path."""
        return problem_list(self.corrupt, self.missing, self.changed)


def findings_path(storage_directory: str | os.PathLike[str]) -> Path:
    """The findings file of an instance, given its storage folder (`instance.storage_directory()`)."""
    return Path(storage_directory) / FINDINGS_FILE


def _strings(value: object) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def read_findings(path: Path) -> dict[str, Findings]:
    """EPN -> what its last audit found wrong; EPNs whose last audit found nothing are absent.
    A corrupt file is moved aside with a warning and read as empty (statefiles.read_json)."""
    found: dict[str, Findings] = {}
    for epn, raw in read_json(Path(path), {}).items():
        if not isinstance(raw, dict) or not isinstance(raw.get("audited_at"), (int, float)):
            continue
        found[str(epn)] = Findings(
            float(raw["audited_at"]),
            _strings(raw.get("corrupt")),
            _strings(raw.get("missing")),
            _strings(raw.get("changed")),
        )
    return found


def record_findings(path: Path, epn: str, audit: Audit, *, audited_at: float | None = None) -> None:
    """Keep what `audit` found for `epn`, replacing its earlier findings; an intact EPN's are dropped."""
    path = Path(path)
    with locked(path):
        data = read_json(path, {})
        if audit.ok:
            if epn not in data:
                return
            del data[epn]
        else:
            data[epn] = {
                "audited_at": time.time() if audited_at is None else audited_at,
                "corrupt": sorted(audit.corrupt),
                "missing": sorted(audit.missing),
                "changed": sorted(audit.changed),
            }
        write_json(path, data)


def findings_for(path: Path, epn: str) -> list[str]:
    """The files of `epn` its last audit found corrupt, missing or changed: the ones to fetch again."""
    found = read_findings(Path(path)).get(epn)
    return found.paths if found else []


def clear_findings(path: Path, epn: str) -> None:
    """Forget `epn`'s findings (it was fetched again and recorded)."""
    path = Path(path)
    if not path.exists():
        return
    with locked(path):
        data = read_json(path, {})
        if epn in data:
            del data[epn]
            write_json(path, data)


def mark_for_refetch(data_folder: Path, paths: Iterable[str]) -> list[str]:
    """Set the mtime of each listed regular file under `data_folder` to 1 s after the epoch, so that
    rsync's quick check (size and mtime) fetches it again from the source. A missing file, or a
    symlink, needs no mark: rsync fetches what is missing and compares links by target. Returns the
    paths marked."""
    marked = []
    for relative in paths:
        path = _inside(Path(data_folder), relative)
        if path is None:
            continue
        try:
            if not stat.S_ISREG(path.lstat().st_mode):
                continue
            os.utime(path, (REFETCH_MTIME, REFETCH_MTIME), follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            continue
        marked.append(relative)
    return marked
