"""Every live process with what a caller asks of it, read by this call, safe beside another thread.

psutil.process_iter(attrs) keeps one Process object per pid for the whole interpreter and sets
the asked attributes on its shared `.info`; two threads iterating at once (a test and a sampler
thread beside it) then read each other's `.info`, which lacks the keys they asked for (a
KeyError in a paused-worker test). Here each call reads its own dict."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psutil


def processes(*attrs: str) -> Iterator[tuple[psutil.Process, dict[str, Any]]]:
    """(process, its `attrs` as psutil's as_dict reads them) for every process still there; an
    attribute the process will not show (access denied, a zombie) is None."""
    for proc in psutil.process_iter():
        try:
            yield proc, proc.as_dict(attrs=list(attrs), ad_value=None)
        except psutil.NoSuchProcess:
            continue


def rsync_invocations_live() -> Iterator[tuple[int, list[str]]]:
    """(pid, command line) of each live rsync invocation. rsync's receiving side forks (receiver
    and generator share one command line): an invocation is an rsync whose parent is not rsync."""
    for _proc, info in processes("pid", "ppid", "name", "cmdline", "status"):
        if info["name"] != "rsync" or info["status"] == psutil.STATUS_ZOMBIE or not info["cmdline"]:
            continue
        try:
            if psutil.Process(info["ppid"]).name() == "rsync":
                continue
        except psutil.Error:
            continue
        yield info["pid"], info["cmdline"]
