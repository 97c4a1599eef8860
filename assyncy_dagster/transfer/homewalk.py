"""The walk of home that the verification compares with the source, begun before rsync changes it.

A walk of an EPN at home costs one lstat per entry (10,000 files: 30-50 ms), and after a
transfer it came after rsync had exited, on the EPN's own time. Here the walk is made while ssh
sets up its connection (idle time), and the kernel tells (inotify) of every change made in a
walked folder from the moment it was looked at: each folder is watched before it is listed, so
a change lands either in the listing or in a notice. Once rsync has exited, the folders with a
notice are listed again, with a full walk of any folder that is new; with none (a no-op
re-sync), the walk made before is home as it is now.

A first copy has no home to walk before rsync. Then each folder is listed, watched first, as
soon as rsync has moved on from it (`list_done`: its itemized lines have passed to another
folder; rsync receives a folder's files one after another), on the step's own spare time
while rsync runs, and after rsync only the top, the folders with a notice and the folders not
listed so are listed. A folder's listing counts only where the walk after rsync reaches that
folder through folders (never through a symlink put where a folder was).

Whatever the kernel cannot vouch for is walked again in full after rsync, as before: a folder
that could not be watched (no inotify, the user's watch limit, home not there yet), a folder
removed or moved away, notices lost to the kernel's queue limit. The notices cover every change
made on this machine, whatever made it (rsync's writes, renames, chmod, utimes, truncation)
except writes through a memory map; a change made from another machine to a network file
system is not noticed (the fixity audit reads the content back later).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
import struct
import sys
import threading
from pathlib import Path
from typing import Any

from .manifests import KEPT_HIDDEN_NAME, Tree, folder_entry, folder_prefix, local_tree, scan_folder

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
    return folder_prefix(prefix[:-1])


def _refresh_folder_entry(tree: Tree, here: str, prefix: str) -> None:
    """Read again the entry of folder `here` (`prefix` in the tree) in `tree`, if it is still a
    folder (anything else there: the listing holding it has a notice, or is made now)."""
    with contextlib.suppress(OSError):
        info = os.lstat(here)
        if stat.S_ISDIR(info.st_mode):
            tree[prefix[:-1]] = folder_entry(info)


class HomeWalk:
    """The tree of `folder` (manifests.local_tree's), walked by `begin` before a transfer and
    made current by `tree` after it (see the module docstring). Without `begin`, or where
    watching failed, `tree` is a full walk made then."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._fd = -1
        # Each folder listed, by prefix: its entries and its subfolders' prefixes.
        self._listings: dict[str, tuple[Tree, list[str]]] = {}
        self._folders: dict[int, str] = {}  # watch descriptor -> the folder's prefix ("" for the top)
        self._begun = False  # `begin` walked all of home
        self._cannot_watch = False  # no inotify here: `list_done` lists nothing
        self._add_watch: Any = None  # libc's inotify_add_watch, once `_open` has the descriptor
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

    @property
    def walked_before(self) -> bool:
        """Whether `begin` walked home (a re-sync): not for a first copy, nor where it cannot watch."""
        return self._begun

    def begin(self) -> None:
        """Walk `folder` now, watching each folder before it is listed."""
        if not self._open():
            return
        stack = [(os.fspath(self.folder), "")]
        while stack:
            here, prefix = stack.pop()
            if not self._watch(here, prefix):  # not there (a first copy), or the watch limit
                self.close()
                self._listings, self._folders = {}, {}
                return
            stack += self._list(here, prefix)
        self._begun = True

    def list_done(self, prefix: str) -> None:
        """A first copy: list folder `prefix` of home (its path in the tree with a trailing `/`) now
        that rsync has moved on from it, watched first (see the module docstring). Nothing when
        `begin` walked home, for the top (listed after rsync), or where it cannot be watched."""
        if self._begun or not prefix or self._cannot_watch:
            return
        if self._fd < 0 and not self._open():
            self._cannot_watch = True
            return
        here = os.path.join(self.folder, prefix)
        if self._watch(here, prefix):  # else not there, or the watch limit: walked after rsync
            self._list(here, prefix)  # its subfolders: listed when done, or after rsync

    def _list(self, here: str, prefix: str) -> list[tuple[str, str]]:
        """List a folder just watched. Its own entry, in its parent's listing if that was made
        before this watch, is read again: a change inside it in between moved its mtime unseen."""
        parent = self._listings.get(_parent_prefix(prefix)) if prefix else None
        if parent is not None:
            _refresh_folder_entry(parent[0], here, prefix)
        listing: Tree = {}
        subfolders = scan_folder(here, prefix, listing)
        self._listings[prefix] = (listing, [sub_prefix for _, sub_prefix in subfolders])
        return subfolders

    def _open(self) -> bool:
        calls = _inotify()
        if calls is None:
            return False
        self._add_watch = calls[1]
        self._fd = calls[0](_IN_NONBLOCK | _IN_CLOEXEC)
        if self._fd < 0:
            self._fd = -1
            return False
        return True

    def _watch(self, here: str, prefix: str) -> bool:
        wd = self._add_watch(self._fd, os.fsencode(here), _CHANGES | _IN_ONLYDIR | _IN_DONT_FOLLOW)
        if wd < 0 or wd in self._folders:  # not a folder there; or one already watched, e.g. moved
            return False
        self._folders[wd] = prefix
        return True

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
        if not self._begun:
            changed.add("")  # a first copy: the top, never listed, and from it the folders not listed
        self.relisted = len(changed)
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
        """Home walked from the top through its folders: a folder listed before and unchanged since
        from that listing, any other folder (changed, new, never listed) listed now. So a listing
        counts only where the walk reaches its folder through folders."""
        unchanged = {prefix for prefix in self._folders.values() if prefix not in changed}
        base = os.fspath(self.folder)
        tree: Tree = {}
        stack = [""]
        while stack:
            prefix = stack.pop()
            if prefix in unchanged:
                listing, subfolders = self._listings[prefix]
                tree.update(listing)
                stack += subfolders
            else:
                here = os.path.join(base, prefix) if prefix else base
                if prefix:  # its entry in a listing kept: a folder never watched moved its mtime unseen
                    _refresh_folder_entry(tree, here, prefix)
                stack += [sub_prefix for _, sub_prefix in scan_folder(here, prefix, tree)]
        return tree
