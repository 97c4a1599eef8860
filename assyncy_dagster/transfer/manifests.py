"""What an EPN folder holds, as a tree of entries, and how two trees differ.

The same model describes the source (from rsync's itemized lines or a listing)
and the destination (`local_tree`, a walk), so the two compare like with like:
regular files (size, mtime, and the content checksum where one is known),
symlinks (their target), folders (empty ones too) and special files (devices,
fifos, sockets: never data). `local_tree` applies the transfer's own filter
(`--include .info --exclude .*`). Pure functions of data, plus one walk.
"""

from __future__ import annotations

import enum
import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

KEPT_HIDDEN_NAME = ".info"
# Symlinks followed while resolving one link before giving up (the kernel's own limit).
MAX_LINK_HOPS = 40


class Kind(enum.Enum):
    FILE = "f"
    DIR = "d"
    LINK = "l"
    SPECIAL = "s"  # device, fifo, socket


@dataclass(frozen=True)
class Entry:
    """One entry of an EPN folder. `size` counts for files only; `mtime` in whole seconds (UTC);
    `checksum` is the content checksum where known (rsync's sender, or the recorded manifest)."""

    kind: Kind
    size: int = 0
    mtime: int | None = None
    checksum: str | None = None
    target: str | None = None  # a symlink's target, as written


# Relative path (no leading or trailing `/`) -> entry; the top folder itself is not in it.
Tree = dict[str, Entry]


def is_transferred_name(name: str) -> bool:
    """Whether rsync's `--include .info --exclude .*` lets a file or folder of this basename through."""
    return not name.startswith(".") or name == KEPT_HIDDEN_NAME


def files_of(tree: Mapping[str, Entry]) -> dict[str, Entry]:
    return {path: entry for path, entry in tree.items() if entry.kind is Kind.FILE}


def of_kind(tree: Mapping[str, Entry], kind: Kind) -> list[str]:
    return sorted(path for path, entry in tree.items() if entry.kind is kind)


def total_bytes(tree: Mapping[str, Entry]) -> int:
    return sum(entry.size for entry in tree.values() if entry.kind is Kind.FILE)


def local_tree(folder: Path) -> Tree:
    """Every entry under `folder` that a transfer could have put there (the transfer's filter:
    any path component starting with `.` hides it, except one named exactly `.info`, so
    `.rsync-partial/` and rsync's temp files never count). Symlinks are not followed. A
    missing folder is an empty tree."""
    tree: Tree = {}
    stack: list[tuple[str, str]] = [(os.fspath(folder), "")]
    while stack:
        here, prefix = stack.pop()
        try:
            it = os.scandir(here)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for item in it:
                if not is_transferred_name(item.name):
                    continue
                relative = prefix + item.name
                info = item.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    tree[relative] = Entry(Kind.DIR, mtime=int(info.st_mtime))
                    stack.append((item.path, relative + "/"))
                elif stat.S_ISREG(info.st_mode):
                    tree[relative] = Entry(Kind.FILE, info.st_size, int(info.st_mtime))
                elif stat.S_ISLNK(info.st_mode):
                    tree[relative] = Entry(Kind.LINK, mtime=int(info.st_mtime), target=os.readlink(item.path))
                else:
                    tree[relative] = Entry(Kind.SPECIAL, mtime=int(info.st_mtime))
    return tree


def resolve_link(tree: Mapping[str, Entry], path: str) -> str | None:
    """Where symlink `path` resolves within the EPN folder ("" for the folder itself), or None
    when it leaves it. Judged the way the kernel resolves a path: component by component,
    through every symlink of the tree on the way (`a/b/L -> c/../..` leaves when `a/b/c` is
    itself a link to the top). An absolute target, a `..` past the top, or a chain of links
    too long to end all leave."""
    parts: list[str] = path.split("/")[:-1]  # the folder the link sits in
    pending = _components(_target(tree, path))
    hops = 0
    while pending is not None and pending:
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            if not parts:
                return None
            parts.pop()
            continue
        candidate = "/".join([*parts, name])
        entry = tree.get(candidate)
        if entry is not None and entry.kind is Kind.LINK:
            hops += 1
            more = _components(_target(tree, candidate))
            if more is None or hops > MAX_LINK_HOPS:
                return None
            pending = more + pending  # resolved from the link's own folder
            continue
        parts.append(name)
    return None if pending is None else "/".join(parts)


def link_leaves(tree: Mapping[str, Entry], path: str) -> bool:
    """Whether symlink `path` resolves outside the EPN folder (see resolve_link)."""
    return resolve_link(tree, path) is None


def _target(tree: Mapping[str, Entry], path: str) -> str:
    return tree[path].target or ""


def _components(target: str) -> list[str] | None:
    """The components of a relative link target; None for an absolute one (it leaves the EPN)."""
    return None if target.startswith("/") else target.split("/")


def leaving_links(tree: Mapping[str, Entry]) -> list[str]:
    return [path for path in of_kind(tree, Kind.LINK) if link_leaves(tree, path)]


def tree_digest(tree: Mapping[str, Entry]) -> str:
    """A short fingerprint of what a source holds (each file's path, size and mtime, each
    symlink's target): equal digests, same source. The transfer records it with each
    verified EPN; a later listing compares against it without keeping the whole tree, so
    a frame rewritten at the same size (a new mtime) is seen as a change."""
    sha = hashlib.sha256()
    for path in sorted(tree):
        entry = tree[path]
        if entry.kind is Kind.FILE:
            line = f"f\0{entry.size}\0{entry.mtime}"
        elif entry.kind is Kind.LINK:
            line = f"l\0{entry.target}"
        else:
            continue
        sha.update(path.encode("utf-8", "surrogateescape") + b"\0" + line.encode("utf-8", "surrogateescape") + b"\n")
    return sha.hexdigest()[:32]


@dataclass
class TreeDiff:
    """How a destination differs from the source (extra entries at home are allowed)."""

    missing: list[str] = field(default_factory=list)
    size_mismatch: list[tuple[str, int, int]] = field(default_factory=list)
    mtime_mismatch: list[str] = field(default_factory=list)
    missing_links: list[str] = field(default_factory=list)  # absent, or pointing elsewhere at home
    missing_dirs: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.missing or self.size_mismatch or self.mtime_mismatch or self.missing_links or self.missing_dirs
        )

    def rows(self) -> list[tuple[str, str, int | None, int | None]]:
        """Every problem as (path, problem, bytes at the source, bytes at the destination)."""
        return [
            *((p, "missing", None, None) for p in self.missing),
            *((p, "size differs", want, have) for p, want, have in self.size_mismatch),
            *((p, "modification time differs", None, None) for p in self.mtime_mismatch),
            *((p, "symlink missing or different", None, None) for p in self.missing_links),
            *((p, "folder missing", None, None) for p in self.missing_dirs),
        ]

    def problems(self, limit: int = 100) -> list[tuple[str, str, int | None, int | None]]:
        """The first `limit` problems (see rows)."""
        return self.rows()[:limit]

    def summary(self, limit: int = 20) -> str:
        """A readable report: counts, then at most `limit` examples of each problem."""
        if self.ok:
            head = "destination matches the source"
            return head + (f" ({len(self.extra)} extra entries in the destination)" if self.extra else "")
        counts = [
            (len(self.missing), "missing"),
            (len(self.size_mismatch), "with a different size"),
            (len(self.mtime_mismatch), "with a different modification time"),
            (len(self.missing_links), "symlink(s) missing or different"),
            (len(self.missing_dirs), "folder(s) missing"),
        ]
        lines = [", ".join(f"{n} {what}" for n, what in counts if n)]
        rows = self.rows()
        for problem in dict.fromkeys(row[1] for row in rows):
            of_this = [row for row in rows if row[1] == problem]
            for path, _, want, have in of_this[:limit]:
                sizes = f" (source {want} bytes, destination {have} bytes)" if want is not None else ""
                lines.append(f"  {problem}: {path}{sizes}")
            if len(of_this) > limit:
                lines.append(f"  ... and {len(of_this) - limit} more: {problem}")
        return "\n".join(lines)


def compare_trees(source: Mapping[str, Entry], home: Mapping[str, Entry]) -> TreeDiff:
    """Compare the source's tree with the destination's: every file with the same size and
    mtime, every symlink with the same target, every folder (empty ones too)."""
    diff = TreeDiff()
    for path in sorted(source):
        want, have = source[path], home.get(path)
        if want.kind is Kind.FILE:
            if have is None or have.kind is not Kind.FILE:
                diff.missing.append(path)
            elif have.size != want.size:
                diff.size_mismatch.append((path, want.size, have.size))
            elif want.mtime is not None and have.mtime != want.mtime:
                diff.mtime_mismatch.append(path)
        elif want.kind is Kind.LINK:
            if have is None or have.kind is not Kind.LINK or have.target != want.target:
                diff.missing_links.append(path)
        elif want.kind is Kind.DIR and (have is None or have.kind is not Kind.DIR):
            diff.missing_dirs.append(path)
    diff.extra = sorted(p for p in home if p not in source)
    return diff


def with_checksums(tree: Mapping[str, Entry], known: Iterable[tuple[str, Entry]]) -> Tree:
    """`tree` with the checksum of each file filled from `known` (e.g. the recorded manifest)
    where the tree has none and the known entry has the same size and mtime: a file that rsync
    did not send in this run is the file whose content was recorded before."""
    merged = dict(tree)
    for path, entry in known:
        current = merged.get(path)
        if (
            current is not None
            and current.kind is Kind.FILE
            and current.checksum is None
            and entry.checksum is not None
            and (current.size, current.mtime) == (entry.size, entry.mtime)
        ):
            merged[path] = Entry(Kind.FILE, current.size, current.mtime, checksum=entry.checksum)
    return merged
