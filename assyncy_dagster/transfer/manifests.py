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
from typing import NamedTuple

KEPT_HIDDEN_NAME = ".info"
# Symlinks followed while resolving one link before giving up (the kernel's own limit).
MAX_LINK_HOPS = 40


class Kind(enum.Enum):
    FILE = "f"
    DIR = "d"
    LINK = "l"
    SPECIAL = "s"  # device, fifo, socket


class Entry(NamedTuple):
    """One entry of an EPN folder. `size` counts for files only; `mtime` in whole seconds (UTC);
    `checksum` is the content checksum where known (rsync's sender, or the recorded manifest).

    A named tuple, not a frozen dataclass: an EPN of 100,000 files makes several trees of
    them per transfer (itemized lines, the recorded manifest, the walk of home), and a tuple
    is made in less than half the time."""

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


class Census(NamedTuple):
    """What a tree holds, counted in one pass: files, their bytes, how many of them carry a
    content checksum, and the symlinks and special files by path (sorted)."""

    files: int
    bytes: int
    with_checksum: int
    links: list[str]
    specials: list[str]


def census(tree: Mapping[str, Entry]) -> Census:
    files = size = with_checksum = 0
    links: list[str] = []
    specials: list[str] = []
    file, link, special = Kind.FILE, Kind.LINK, Kind.SPECIAL
    for path, entry in tree.items():
        kind = entry.kind
        if kind is file:
            files += 1
            size += entry.size
            if entry.checksum:
                with_checksum += 1
        elif kind is link:
            links.append(path)
        elif kind is special:
            specials.append(path)
    links.sort()
    specials.sort()
    return Census(files, size, with_checksum, links, specials)


def local_tree(folder: Path) -> Tree:
    """Every entry under `folder` that a transfer could have put there (the transfer's filter:
    any path component starting with `.` hides it, except one named exactly `.info`, so
    `.rsync-partial/` and rsync's temp files never count). Symlinks are not followed. A
    missing folder is an empty tree."""
    tree: Tree = {}
    stack: list[tuple[str, str]] = [(os.fspath(folder), "")]
    while stack:
        stack += scan_folder(*stack.pop(), tree)
    return tree


def scan_folder(here: str, prefix: str, tree: Tree) -> list[tuple[str, str]]:
    """Add the entries of folder `here` to `tree` under `prefix` (its path in the tree, with a
    trailing `/`, or "" for the top), as local_tree sees them; returns its subfolders as
    (path, prefix). A folder that is not there adds nothing.

    One lstat per entry (os.scandir's own, cached) and nothing else but a link's readlink:
    this runs after every transfer, a no-op re-sync included."""
    file, link, special = Kind.FILE, Kind.LINK, Kind.SPECIAL
    is_dir, is_reg, is_link = stat.S_ISDIR, stat.S_ISREG, stat.S_ISLNK
    folders: list[tuple[str, str]] = []
    try:
        it = os.scandir(here)
    except (FileNotFoundError, NotADirectoryError):
        return folders
    with it:
        for item in it:
            name = item.name
            if name[0] == "." and name != KEPT_HIDDEN_NAME:  # is_transferred_name, inlined: per entry
                continue
            relative = prefix + name
            info = item.stat(follow_symlinks=False)
            mode = info.st_mode
            if is_reg(mode):
                tree[relative] = Entry(file, info.st_size, int(info.st_mtime))
            elif is_dir(mode):
                tree[relative] = folder_entry(info)
                folders.append((item.path, relative + "/"))
            elif is_link(mode):
                tree[relative] = Entry(link, 0, int(info.st_mtime), None, os.readlink(item.path))
            else:
                tree[relative] = Entry(special, 0, int(info.st_mtime))
    return folders


def folder_prefix(path: str) -> str:
    """The prefix in a tree of the folder holding `path` ("a/b/c" -> "a/b/", "c" -> "")."""
    return path[: path.rfind("/") + 1]


def folder_entry(info: os.stat_result) -> Entry:
    """A folder's entry, from its lstat."""
    return Entry(Kind.DIR, 0, int(info.st_mtime))


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


def leaving_links(tree: Mapping[str, Entry], links: Iterable[str] | None = None) -> list[str]:
    """The symlinks of `tree` (or of `links`, its links by path) that resolve outside the EPN folder, sorted."""
    links = census(tree).links if links is None else links
    return sorted(path for path in links if link_leaves(tree, path))


def tree_digest(tree: Mapping[str, Entry]) -> str:
    """A short fingerprint of what a source holds (each file's path, size and mtime, each
    symlink's target): equal digests, same source. The transfer records it with each
    verified EPN; a later listing compares against it without keeping the whole tree, so
    a frame rewritten at the same size (a new mtime) is seen as a change."""
    lines = []
    for path in sorted(tree):
        entry = tree[path]
        if entry.kind is Kind.FILE:
            lines.append(f"{path}\0f\0{entry.size}\0{entry.mtime}\n")
        elif entry.kind is Kind.LINK:
            lines.append(f"{path}\0l\0{entry.target}\n")
    return hashlib.sha256("".join(lines).encode("utf-8", "surrogateescape")).hexdigest()[:32]


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
    mtime, every symlink with the same target, every folder (empty ones too). Each list of
    problems is sorted by path."""
    diff = TreeDiff()
    get = home.get
    file, link, folder = Kind.FILE, Kind.LINK, Kind.DIR
    for path, want in source.items():
        have = get(path)
        kind = want.kind
        if kind is file:
            if have is None or have.kind is not file:
                diff.missing.append(path)
            elif have.size != want.size:
                diff.size_mismatch.append((path, want.size, have.size))
            elif want.mtime is not None and have.mtime != want.mtime:
                diff.mtime_mismatch.append(path)
        elif kind is link:
            if have is None or have.kind is not link or have.target != want.target:
                diff.missing_links.append(path)
        elif kind is folder and (have is None or have.kind is not folder):
            diff.missing_dirs.append(path)
    for problems in (diff.missing, diff.size_mismatch, diff.mtime_mismatch, diff.missing_links, diff.missing_dirs):
        problems.sort()
    diff.extra = sorted(home.keys() - source.keys())
    return diff


def with_checksums(tree: Mapping[str, Entry], known: Iterable[tuple[str, Entry]]) -> Tree:
    """`tree` with the checksum of each file filled from `known` (e.g. the recorded manifest)
    where the tree has none and the known entry has the same size and mtime: a file that rsync
    did not send in this run is the file whose content was recorded before."""
    merged = dict(tree)
    get = merged.get
    file = Kind.FILE
    for path, entry in known:
        current = get(path)
        if (
            current is not None
            and current.kind is file
            and current.checksum is None
            and entry.checksum is not None
            and current.size == entry.size
            and current.mtime == entry.mtime
        ):
            merged[path] = Entry(file, current.size, current.mtime, entry.checksum)
    return merged
