"""What a destination holds, and how it differs from what the source holds.

`local_manifest` applies the transfer's own filter (`--include .info
--exclude .*`) to the destination, so the two manifests compare like with like.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .commands import KEPT_HIDDEN_NAME


def is_transferred_name(name: str) -> bool:
    """Whether rsync's `--include .info --exclude .*` lets a file or folder of this basename through."""
    return not name.startswith(".") or name == KEPT_HIDDEN_NAME


def local_manifest(destination: Path, links: dict[str, str] | None = None) -> dict[str, int]:
    """Relative path -> size of every regular file under `destination` that a transfer could have put there.

    Same filter as the transfer: any path component starting with `.` hides
    the file, except one named exactly `.info` (so `.rsync-partial/` and rsync
    temp files never count). Symlinks are not followed; given a `links` dict,
    the same walk fills it with each symlink's relative path -> target. A
    missing destination is an empty manifest.
    """
    manifest: dict[str, int] = {}
    stack: list[tuple[str, str]] = [(os.fspath(destination), "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            it = os.scandir(folder)
        except FileNotFoundError:
            continue
        with it:
            for entry in it:
                if not is_transferred_name(entry.name):
                    continue
                relative = prefix + entry.name
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, relative + "/"))
                elif entry.is_file(follow_symlinks=False):
                    manifest[relative] = entry.stat(follow_symlinks=False).st_size
                elif links is not None and entry.is_symlink():
                    links[relative] = os.readlink(entry.path)
    return manifest


def is_unsafe_link(path: str, target: str) -> bool:
    """Whether symlink `path` (relative to the EPN folder) points outside the EPN folder:
    an absolute target, or one whose `..` climb past the folder's top."""
    if target.startswith("/"):
        return True
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    return resolved == ".." or resolved.startswith("../")


def manifest_digest(files: Mapping[str, int]) -> str:
    """A short fingerprint of a manifest (paths and sizes): equal digests, same files.

    The transfer records it with each verified EPN; a later listing of the
    source compares against it without keeping the whole manifest."""
    sha = hashlib.sha256()
    for path in sorted(files):
        sha.update(path.encode("utf-8", "surrogateescape") + b"\0" + str(files[path]).encode() + b"\n")
    return sha.hexdigest()[:32]


@dataclass
class ManifestDiff:
    """How a destination differs from the source: what is missing or has the wrong size (and what is extra)."""

    missing: list[str]
    size_mismatch: list[tuple[str, int, int]]
    extra: list[str] = field(default_factory=list)
    # Source symlinks absent from the destination, or pointing elsewhere there.
    missing_links: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every source file is in the destination with the same size, and every
        source symlink with the same target (extra files are fine)."""
        return not self.missing and not self.size_mismatch and not self.missing_links

    def problems(self, limit: int = 100) -> list[tuple[str, str, int | None, int | None]]:
        """The first `limit` problems as (path, problem, bytes at the source, bytes at the destination)."""
        rows: list[tuple[str, str, int | None, int | None]] = []
        rows += [(p, "missing", None, None) for p in self.missing[:limit]]
        rows += [(p, "size differs", want, have) for p, want, have in self.size_mismatch[:limit]]
        rows += [(p, "symlink missing or different", None, None) for p in self.missing_links[:limit]]
        return rows[:limit]

    def summary(self, limit: int = 20) -> str:
        """A readable report: counts, then at most `limit` examples of each problem."""
        if self.ok:
            head = "destination matches the source"
            return head + (f" ({len(self.extra)} extra file(s) in the destination)" if self.extra else "")
        lines = [
            f"{len(self.missing)} missing, {len(self.size_mismatch)} with a different size"
            + (f", {len(self.missing_links)} symlink(s) missing or different" if self.missing_links else "")
            + (f", {len(self.extra)} extra" if self.extra else "")
        ]
        for path in self.missing_links[:limit]:
            lines.append(f"  symlink missing or different: {path}")
        for path in self.missing[:limit]:
            lines.append(f"  missing: {path}")
        if len(self.missing) > limit:
            lines.append(f"  ... and {len(self.missing) - limit} more missing")
        for path, expected, actual in self.size_mismatch[:limit]:
            lines.append(f"  size differs: {path} (source {expected} bytes, destination {actual} bytes)")
        if len(self.size_mismatch) > limit:
            lines.append(f"  ... and {len(self.size_mismatch) - limit} more with a different size")
        return "\n".join(lines)


def compare_manifests(
    expected: Mapping[str, int],
    actual: Mapping[str, int],
    expected_links: Mapping[str, str] | None = None,
    actual_links: Mapping[str, str] | None = None,
) -> ManifestDiff:
    """Compare the source manifest (and its symlinks) with the destination's."""
    missing = sorted(p for p in expected if p not in actual)
    mismatch = sorted((p, size, actual[p]) for p, size in expected.items() if p in actual and actual[p] != size)
    extra = sorted(p for p in actual if p not in expected)
    actual_links = actual_links or {}
    links = sorted(p for p, target in (expected_links or {}).items() if actual_links.get(p) != target)
    return ManifestDiff(missing=missing, size_mismatch=mismatch, extra=extra, missing_links=links)
