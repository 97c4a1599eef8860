"""The walk of home that the verification compares with the source, begun before rsync changes it.

A walk of an EPN at home costs one lstat per entry (10,000 files: 30-50 ms), and after a
transfer it came after rsync had exited, on the EPN's own time. Here the walk is made while ssh
sets up its connection (idle time), and the kernel tells (inotify) of every change made in a
walked folder from the moment it was looked at: each folder is watched before it is listed, so
a change lands either in the listing or in a notice. Once rsync has exited, the folders with a
notice are listed again, with a full walk of any folder that is new; with none (a no-op
re-sync), the walk made before is home as it is now.

Whatever the kernel cannot vouch for is walked again in full after rsync, as before: a folder
that could not be watched (no inotify, the user's watch limit, home not there yet), a folder
removed or moved away, notices lost to the kernel's queue limit. The notices cover every change
made on this machine, whatever made it (rsync's writes, renames, chmod, utimes, truncation)
except writes through a memory map; a change made from another machine to a network file
system is not noticed (the fixity audit reads the content back later).
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
import threading
from pathlib import Path

from .manifests import KEPT_HIDDEN_NAME, Tree, local_tree, scan_folder

# <sys/inotify.h>
_IN_MODIFY = 0x002
_IN_ATTRIB = 0x004
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_FROM = 0x040
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_UNMOUNT = 0x2000
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_IN_ONLYDIR = 0x01000000
_IN_DONT_FOLLOW = 0x02000000
_IN_ISDIR = 0x40000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_CHANGES = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_CLOSE_WRITE
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
)
# A name added to or taken from a folder: the folder's own mtime moves too (any name, hidden ones too).
_ENTRIES = _IN_CREATE | _IN_DELETE | _IN_MOVED_FROM | _IN_MOVED_TO
# A notice the walk cannot follow: a watched folder gone or moved, its file system gone, notices lost.
_LOST = _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_UNMOUNT | _IN_Q_OVERFLOW | _IN_IGNORED
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len; then the name, NUL-padded to len


def _inotify():
    """libc's inotify calls, or None where there are none (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # this process's own libc: no search, no subprocess
        return libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError):
        return None


def _parent_prefix(prefix: str) -> str:
    """The prefix of the folder holding the folder of `prefix` ("a/b/" -> "a/", "a/" -> "")."""
    parent = prefix[:-1].rpartition("/")[0]
    return parent + "/" if parent else ""


class HomeWalk:
    """The tree of `folder` (manifests.local_tree's), walked by `begin` before a transfer and
    made current by `tree` after it (see the module docstring). Without `begin`, or where
    watching failed, `tree` is a full walk made then."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._fd = -1
        self._tree: Tree = {}
        self._folders: dict[int, str] = {}  # watch descriptor -> the folder's prefix ("" for the top)
        self.relisted = -1  # folders listed again by `tree` (-1: walked in full, nothing watched or kept)

    def __enter__(self) -> HomeWalk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop watching. Closing the descriptor removes every watch, and the kernel waits for a
        grace period to do it (6-16 ms, idle): a thread of its own closes it, off the EPN's time."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            threading.Thread(target=os.close, args=(fd,), name="inotify close", daemon=True).start()

    def begin(self) -> None:
        """Walk `folder` now, watching each folder before it is listed."""
        calls = _inotify()
        if calls is None:
            return
        init, add_watch = calls
        self._fd = init(_IN_NONBLOCK | _IN_CLOEXEC)
        if self._fd < 0:
            self._fd = -1
            return
        stack = [(os.fspath(self.folder), "")]
        while stack:
            here, prefix = stack.pop()
            wd = add_watch(self._fd, os.fsencode(here), _CHANGES | _IN_ONLYDIR | _IN_DONT_FOLLOW)
            if wd < 0:  # not there (a first copy), or the watch limit: walked in full after rsync
                self.close()
                return
            self._folders[wd] = prefix
            stack += scan_folder(here, prefix, self._tree)

    def tree(self) -> Tree:
        """The tree of `folder` as it is now: call once rsync has exited."""
        if self._fd < 0:
            self.relisted = -1
            return local_tree(self.folder)
        changed = self._changed_folders()
        self.close()
        if changed is None:
            self.relisted = -1
            return local_tree(self.folder)
        self.relisted = len(changed)
        if not changed:
            return self._tree
        return self._relisted(changed)

    def _changed_folders(self) -> set[str] | None:
        """The prefixes of the watched folders with a change noticed since they were listed; None
        when one cannot be followed (see _LOST)."""
        changed: set[str] = set()
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return changed
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
                name = data[offset + _HEADER.size : offset + _HEADER.size + length].rstrip(b"\0")
                offset += _HEADER.size + length
                if mask & _LOST or wd not in self._folders:
                    return None
                if not name:  # the watched folder itself (its mode or mtime): its parent lists it
                    prefix = self._folders[wd]
                    if prefix:
                        changed.add(_parent_prefix(prefix))
                    continue
                prefix = self._folders[wd]
                if mask & _ENTRIES and prefix:  # the folder's mtime moved: its parent's listing holds it
                    changed.add(_parent_prefix(prefix))
                if name.startswith(b".") and name != KEPT_HIDDEN_NAME.encode():
                    continue  # rsync's temporary files, .rsync-partial: never part of the tree themselves
                if mask & _IN_ISDIR and mask & (_IN_DELETE | _IN_MOVED_FROM):
                    return None  # a walked folder gone: its entries cannot be followed from here
                changed.add(prefix)

    def _relisted(self, changed: set[str]) -> Tree:
        """The tree walked before, with each changed folder listed again and new folders walked."""
        watched = set(self._folders.values())
        tree: Tree = {}
        for path, entry in self._tree.items():
            if _parent_prefix(path + "/") not in changed:
                tree[path] = entry
        base = os.fspath(self.folder)
        stack = [(os.path.join(base, prefix) if prefix else base, prefix) for prefix in changed]
        while stack:
            here, prefix = stack.pop()
            for sub_path, sub_prefix in scan_folder(here, prefix, tree):
                if sub_prefix not in watched:  # new since the walk: walked now, in full
                    stack.append((sub_path, sub_prefix))
        return tree
