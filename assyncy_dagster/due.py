"""Since when each EPN has been due: the clock of the stuck-EPN canary.

An EPN is *due* from the moment this system first sees it with its visit
ended, mapped, and its data not home, whether it is then transferred,
failing, held back, waiting for its folder or waiting on a run. It stops
being due when it is home (in ignore.yml) or no longer mapped. Time counts
from the first sighting, so a backlog found at first start is not stuck
until `stuck-after-hours` later.

Kept in a small JSON file in the instance's storage (EPNs and times only),
shared by epn_sensor, mxsync and the repatriation report; written and read
through statefiles.py, so it survives a power cut, and a corrupt one is moved
aside with a warning rather than silently restarting every clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg

from .statefiles import read_json, write_json

DUE_FILE = "epn_due_since.json"


def due_file(instance: dg.DagsterInstance) -> Path:
    return Path(instance.storage_directory()) / DUE_FILE


def read_due_since(instance: dg.DagsterInstance) -> dict[str, float]:
    """EPN -> epoch seconds when it was first seen due ({} when nothing was recorded yet,
    or when the file was corrupt: then it is moved aside with a warning)."""
    data = read_json(due_file(instance), {})
    return {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float))}


def update_due_since(instance: dg.DagsterInstance, due_now: Iterable[str], now: datetime) -> dict[str, float]:
    """Record the EPNs due at `now`: new ones get `now`, known ones keep their first sighting,
    EPNs no longer due are dropped. Returns the new map; writes only when it changed."""
    before = read_due_since(instance)
    stamp = now.timestamp()
    after = {epn: before.get(epn, stamp) for epn in sorted(set(due_now))}
    if after != before:
        write_json(due_file(instance), after)
    return after


def stuck_since(due_since: Mapping[str, float], now: datetime, stuck_after_hours: float) -> dict[str, float]:
    """The EPNs due for longer than `stuck_after_hours`: EPN -> since when."""
    limit = (now - timedelta(hours=stuck_after_hours)).timestamp()
    return {epn: since for epn, since in due_since.items() if since <= limit}
