"""What a copy of an EPN is, entry by entry: for tests and benchmarks that compare two copies.

Two copies are the same copy when every entry (the top folder included) has the same
type, whole mode (setgid included), mtime, and a file's bytes or a link's target.
Comparing bytes alone would miss a lost symlink, an empty folder, a missing `g+s`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def copy_entries(folder: Path) -> dict[str, tuple]:
    """Every entry of a copy, the top folder included, as what a user would notice: its type and
    whole mode (setgid included), its mtime, and a file's bytes or a link's target. Two copies of
    one EPN are the same copy when these are equal (transfer filter applied: hidden names skipped)."""
    entries: dict[str, tuple] = {}
    for path in [folder, *sorted(folder.rglob("*"))]:
        relative = "" if path == folder else str(path.relative_to(folder))
        if any(part.startswith(".") and part != ".info" for part in Path(relative).parts):
            continue
        info = path.lstat()
        if path.is_symlink():
            entries[relative] = ("link", info.st_mode, int(info.st_mtime), os.readlink(path))
        elif path.is_dir():
            entries[relative] = ("folder", info.st_mode, int(info.st_mtime))
        else:
            entries[relative] = ("file", info.st_mode, int(info.st_mtime), hashlib.sha256(path.read_bytes()).digest())
    return entries
