"""The EPN's manifest at home: what was verified, in forms that tools other than ours check.

The seed's layout `<project>/<epn>/data/` is already a BagIt payload folder
(RFC 8493), so the manifest goes beside `data/`:

- `manifest-<algorithm>.txt`: `<checksum>  data/<path>` for every file (and
  every symlink to a file of the EPN) whose checksum rsync's sender computed.
  `xxhsum -c manifest-xxh128.txt` (Debian's xxhash) or
  `md5sum -c manifest-md5.txt`, run in the EPN folder, re-checks the data.
- with `checksum-algorithm: md5`, also `bagit.txt` and `bag-info.txt`, so the
  EPN folder validates as a bag with the Library of Congress's `bagit` tool
  (`bagit.py --validate <epn folder>`). With xxh128, `bag-info.txt` alone
  (BagIt has no xxh128), for the provenance.
- `assyncy-manifest.tsv`: our own full record, the one the tool reads back:
  kind, size, mtime, checksum (blank where none is known: "verified by size
  only") and path (and a symlink's target) of every file and symlink.

Each is written atomically (statefiles). Nothing else beside `data/` is
touched: a user's own files there stay as they are. Names holding a newline,
a carriage return or a backslash cannot be written in xxhsum's format; they are
left out of `manifest-xxh128.txt` (still in `assyncy-manifest.tsv`, and counted
in `bag-info.txt`). BagIt's own encoding (`%0A`, `%0D`, `%25`) covers them in
`manifest-md5.txt`.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..escaping import one_line
from ..statefiles import write_atomically
from .manifests import Entry, Kind, resolve_link

RECORD_NAME = "assyncy-manifest.tsv"
RECORD_HEADER = "# assyncy-dagster EPN manifest 1"
PAYLOAD = "data"
BAGIT_DECLARATION = "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"
_NEEDS_ENCODING = re.compile("[%\r\n\t]")
_XXHSUM_UNREADABLE = re.compile(r"[\n\r\\]")  # names xxhsum's format cannot hold


def manifest_name(algorithm: str) -> str:
    return f"manifest-{algorithm}.txt"


@dataclass(frozen=True)
class Recorded:
    """What the manifest at home says: the algorithm, every file and symlink, and its digest."""

    algorithm: str
    tree: dict[str, Entry]
    digest: str


def _encode(text: str, *, tab: bool = True) -> str:
    """Percent-encode what would break a line (BagIt's rule: `%`, CR, LF) or a column (tab)."""
    if not _NEEDS_ENCODING.search(text):  # nearly every name: one scan, no copies
        return text
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace("\t", "%09") if tab else text


def _decode(text: str) -> str:
    if "%" not in text:
        return text
    return text.replace("%0A", "\n").replace("%0D", "\r").replace("%09", "\t").replace("%25", "%")


def _manifest_texts(tree: Mapping[str, Entry], algorithm: str) -> tuple[str, str, int]:
    """The record (`assyncy-manifest.tsv`) and `manifest-<algorithm>.txt` of `tree` (its files and
    symlinks), made in one pass over its sorted paths, and how many files had to be left out of
    the checksum manifest.

    A symlink to a file of the EPN is listed in the checksum manifest with that file's checksum:
    `xxhsum -c` and BagIt both read a payload link as the file it resolves to."""
    record = [f"{RECORD_HEADER}\talgorithm={algorithm}\n# kind\tsize\tmtime\tchecksum\tpath\ttarget\n"]
    sums: list[str] = []
    left_out = 0
    md5 = algorithm == "md5"
    file, link = Kind.FILE, Kind.LINK
    for path in sorted(tree):
        entry = tree[path]
        payload: Entry | None = entry
        if entry.kind is file:
            record.append(f"f\t{entry.size}\t{entry.mtime}\t{entry.checksum or ''}\t{_encode(path)}\t\n")
        elif entry.kind is link:
            record.append(f"l\t0\t{entry.mtime}\t\t{_encode(path)}\t{_encode(entry.target or '')}\n")
            payload = _resolved(tree, path)
        else:
            continue
        if payload is None or not payload.checksum:
            continue
        name = f"{PAYLOAD}/{path}"
        if md5:
            sums.append(f"{payload.checksum}  {_encode(name, tab=False)}\n")
        elif _XXHSUM_UNREADABLE.search(name):
            left_out += 1
        else:
            sums.append(f"{payload.checksum}  {name}\n")
    return "".join(record), "".join(sums), left_out


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


@dataclass(frozen=True)
class Manifest:
    """The manifest of an EPN, made (`make_manifest`) while its data is being made durable and
    written (`Manifest.write`) once it is: its digest, and the files to write in order, the
    record last (its digest is the data version). No files: the manifest at home says this."""

    digest: str
    files: tuple[tuple[str, str], ...] = ()

    def write(self, epn_folder: Path) -> str:
        for name, text in self.files:
            write_atomically(epn_folder / name, text)
        return self.digest


def make_manifest(
    epn_folder: Path,
    tree: Mapping[str, Entry],
    *,
    algorithm: str,
    info: Mapping[str, str],
    recorded: Recorded | None = None,
) -> Manifest:
    """The manifest of `tree` beside `data/` (see the module docstring). `info` fills bag-info.txt.
    `recorded`: the manifest as read at home before the transfer; when it (or the one at home
    now) already says exactly this (a re-sync that changed nothing), there is nothing to write
    and its digest stands."""
    if (
        recorded is not None
        and recorded.algorithm == algorithm
        and _records_exactly(recorded.tree, tree)
        and (epn_folder / manifest_name(algorithm)).is_file()
    ):
        return Manifest(recorded.digest)
    kept = {p: e for p, e in tree.items() if e.kind is Kind.FILE or e.kind is Kind.LINK}
    record, sums, left_out = _manifest_texts(kept, algorithm)
    if _unchanged(epn_folder, record, algorithm):
        return Manifest(_digest(record))  # a re-sync that changed nothing: the manifest (and its date) stand
    files = [e for e in kept.values() if e.kind is Kind.FILE]
    bag_info = dict(info)
    bag_info["Payload-Oxum"] = f"{sum(e.size for e in files)}.{len(files)}"
    bag_info["Files-Verified-By-Content"] = str(sum(1 for e in files if e.checksum))
    bag_info["Files-Verified-By-Size-Only"] = str(sum(1 for e in files if not e.checksum))
    if left_out:
        bag_info["Files-Not-In-Checksum-Manifest"] = f"{left_out} (names xxhsum cannot read; see {RECORD_NAME})"
    written: list[tuple[str, str]] = []
    if algorithm == "md5":
        # BagIt's Oxum counts what its tools walk in data/: a symlink to a file counts as that file.
        payload = [e for e in (_resolved(kept, p) for p in kept) if e is not None]
        bag_info["Payload-Oxum"] = f"{sum(e.size for e in payload)}.{len(payload)}"
        written.append(("bagit.txt", BAGIT_DECLARATION))
    written.append((manifest_name(algorithm), sums))
    written.append(("bag-info.txt", "".join(f"{k}: {one_line(v)}\n" for k, v in bag_info.items())))
    written.append((RECORD_NAME, record))  # last: its digest is the data version
    return Manifest(_digest(record), tuple(written))


def _records_exactly(recorded: Mapping[str, Entry], tree: Mapping[str, Entry]) -> bool:
    """Whether `recorded` (files and links only, as a manifest holds them) holds exactly the files
    and links of `tree`, entry for entry: compared in place, with no copy of a large tree."""
    get = tree.get
    if any(get(path) != entry for path, entry in recorded.items()):
        return False
    file, link = Kind.FILE, Kind.LINK
    return sum(1 for entry in tree.values() if entry.kind is file or entry.kind is link) == len(recorded)


def _unchanged(epn_folder: Path, record: str, algorithm: str) -> bool:
    """Whether the manifest at home already says exactly this (and its checksum file is there)."""
    try:
        return (epn_folder / RECORD_NAME).read_text(encoding="utf-8", errors="surrogateescape") == record and (
            epn_folder / manifest_name(algorithm)
        ).is_file()
    except (FileNotFoundError, NotADirectoryError):
        return False


def _resolved(tree: Mapping[str, Entry], path: str) -> Entry | None:
    """The file `path` is, or that it resolves to within the EPN when it is a link; else None."""
    entry: Entry | None = tree[path]
    if entry is not None and entry.kind is Kind.LINK:
        target = resolve_link(tree, path)
        entry = tree.get(target) if target is not None else None
    return entry if entry is not None and entry.kind is Kind.FILE else None


def read_manifest(epn_folder: Path) -> Recorded | None:
    """The manifest recorded at home, or None when there is none (brought home by the old tool
    or an earlier version) or it is not ours. A damaged line is skipped, never guessed."""
    try:
        text = (epn_folder / RECORD_NAME).read_text(encoding="utf-8", errors="surrogateescape")
    except (FileNotFoundError, NotADirectoryError):
        return None
    lines = text.splitlines()
    if not lines or not lines[0].startswith(RECORD_HEADER) or "algorithm=" not in lines[0]:
        return None
    algorithm = lines[0].split("algorithm=", 1)[1].strip()
    tree: dict[str, Entry] = {}
    file, link = Kind.FILE, Kind.LINK
    for line in lines[1:]:
        parts = line.split("\t")
        if len(parts) != 6:  # comments, damaged lines
            continue
        kind, size, mtime, checksum, path, target = parts
        try:
            if kind == "f":
                tree[_decode(path)] = Entry(file, int(size), int(mtime), checksum or None)
            elif kind == "l":
                tree[_decode(path)] = Entry(link, 0, int(mtime), None, _decode(target))
        except ValueError:
            continue
    return Recorded(algorithm, tree, _digest(text))


def flush_to_disk(folder: Path) -> None:
    """Make what rsync wrote under `folder` durable before the EPN is recorded: rsync does not
    fsync, and after a power cut files renamed into place may come back empty. One syncfs(2) of
    the folder's file system (Linux); elsewhere, sync(2)."""
    syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)  # the C library already loaded
    if syncfs is None:
        os.sync()
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"syncfs of {folder}: {os.strerror(errno)}")
    finally:
        os.close(fd)


class Flush:
    """`flush_to_disk(folder)` begun now in a thread of its own, so the step reads the recorded
    manifest, walks home and verifies while the kernel writes the copy back (the C call
    releases the GIL). Started only once rsync has exited, it covers every byte rsync wrote;
    `wait` returns when they are durable, or raises the flush's OSError, and the EPN is
    recorded only after it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.seconds = 0.0  # what the flush itself took, from its start
        self._error: OSError | None = None
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"flush {folder}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            flush_to_disk(self.folder)
        except OSError as exc:
            self._error = exc
        finally:
            self.seconds = time.monotonic() - self._started

    def wait(self) -> float:
        """Block until the data is durable; returns how long this call waited."""
        waited = time.monotonic()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return time.monotonic() - waited
