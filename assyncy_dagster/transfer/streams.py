"""Parallel streams for one large EPN: share its files out over several rsyncs.

A WAN link is often capped per flow (per TCP connection), so one rsync over one
ssh connection cannot fill it. With `transfer-streams: N`, an EPN whose source
holds at least `transfer-streams-min-mib` is split into up to N chunks of about
equal bytes, and each chunk is pulled by its own rsync over its own ssh
connection (`--files-from`), all into the same destination at once. The
chunks come from a listing with the transfer's own filters, so the streams
together copy exactly what one rsync would (empty folders aside: they hold
no data, and a stream creates the folders its files need).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass

MIB = 1 << 20


@dataclass(frozen=True)
class StreamPlan:
    """The chunks (relative paths) to pull at once; one chunk means one plain rsync."""

    chunks: tuple[tuple[str, ...], ...]
    chunk_bytes: tuple[int, ...]

    @property
    def streams(self) -> int:
        return len(self.chunks)


def plan_streams(manifest: Mapping[str, int], streams: int, min_mib: float) -> StreamPlan | None:
    """Split `manifest` (relative path -> size) into at most `streams` chunks balanced by bytes.

    None when one rsync should do: one stream asked for, fewer than two files,
    or less than `min_mib` MiB in all. Largest files first, each into the
    lightest chunk so far (within one largest file of the best split)."""
    total = sum(manifest.values())
    if streams <= 1 or len(manifest) < 2 or total < min_mib * MIB:
        return None
    count = min(streams, len(manifest))
    heap: list[tuple[int, int]] = [(0, i) for i in range(count)]
    chunks: list[list[str]] = [[] for _ in range(count)]
    sizes = [0] * count
    for path, size in sorted(manifest.items(), key=lambda item: (-item[1], item[0])):
        load, index = heapq.heappop(heap)
        chunks[index].append(path)
        sizes[index] = load + size
        heapq.heappush(heap, (sizes[index], index))
    kept = [(tuple(sorted(chunk)), size) for chunk, size in zip(chunks, sizes, strict=True) if chunk]
    return StreamPlan(chunks=tuple(c for c, _ in kept), chunk_bytes=tuple(s for _, s in kept))
