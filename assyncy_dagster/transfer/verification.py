"""The one verification: may this EPN be recorded as home?

Every path that records an EPN asks `verify_tree` (a sensor batch, a UI
backfill, `dagster asset materialize`, the stand-alone `matches_source` check,
mxsync). It says yes only when:

- the source holds at least one file (a beamline makes folders at the start
  of a visit: an empty EPN is held back, never recorded);
- the source holds no special file (device, fifo, socket: never data, and
  rsync passes them over with exit 0);
- no symlink resolves outside the EPN folder, judged by where it resolves
  (manifests.link_leaves), not by its text: its data could not be fetched;
- every file is at home with the same size and mtime, every symlink with the
  same target, every folder (empty ones too).

Files whose content checksum is known (the sender's, recorded in the EPN's
manifest) are verified by content; the rest by size and mtime only, and the
verdict counts both. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .manifests import Entry, TreeDiff, census, compare_trees, leaving_links

SHOWN = 10


@dataclass
class Verdict:
    epn: str
    source_files: int
    source_bytes: int
    source_symlinks: int
    empty: bool
    refusals: list[str] = field(default_factory=list)
    diff: TreeDiff = field(default_factory=TreeDiff)
    verified_by_content: int = 0
    verified_by_size_only: int = 0
    leaving: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.empty and not self.refusals and self.diff.ok

    def summary(self) -> str:
        if self.empty:
            return f"EPN {self.epn}: its folder on the SFTP host holds no files (yet); not recorded"
        if self.refusals:
            return "; ".join(self.refusals)
        if not self.diff.ok:
            return self.diff.summary()
        text = self.diff.summary()
        if self.verified_by_size_only:
            text += (
                f"; {self.verified_by_content} file(s) verified by content, {self.verified_by_size_only} "
                "by size only (no checksum recorded: see 'What home means' in the README)"
            )
        return text


def _shown(items: list[str]) -> str:
    return ", ".join(items[:SHOWN]) + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def verify_tree(epn: str, source: Mapping[str, Entry], home: Mapping[str, Entry]) -> Verdict:
    """The verdict on `home` (the destination's tree) against `source` (the source's tree,
    checksums filled where known)."""
    held = census(source)
    verdict = Verdict(
        epn=epn,
        source_files=held.files,
        source_bytes=held.bytes,
        source_symlinks=len(held.links),
        empty=not held.files,
    )
    specials = held.specials
    if specials:
        verdict.refusals.append(
            f"EPN {epn}: the source holds {len(specials)} special file(s) (devices, fifos, sockets) that are not "
            f"copied: {_shown(specials)}; not recorded. Ask the facility what they should be."
        )
    verdict.leaving = leaving_links(source, held.links)
    if verdict.leaving:
        shown = _shown([f"{p} -> {source[p].target}" for p in verdict.leaving])
        verdict.refusals.append(
            f"EPN {epn}: the source holds {len(verdict.leaving)} symlink(s) resolving outside the EPN folder, "
            f"whose data the SFTP account cannot fetch: {shown}; not recorded. Ask the facility to replace "
            "them with the files they point to."
        )
    verdict.diff = compare_trees(source, home)
    verdict.verified_by_content = held.with_checksum
    verdict.verified_by_size_only = held.files - held.with_checksum
    return verdict
