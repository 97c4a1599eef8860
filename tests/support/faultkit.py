"""What the fault suite (tests/faults/) needs beyond tests/support/helpers.py: its figures,
which the scale-out tests print too, the EPNs a sensor result requests, and snapshots of a tree.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from assyncy_dagster.names import REPATRIATION_JOB
from assyncy_dagster.run_configs import batch_epns


def figure(text: str) -> None:
    """Print a measured figure (shown with -s) and add it to the run's "fault figures" section,
    which tests/conftest.py shows at the end (`make test`)."""
    print(f"\nFIGURE {text}", flush=True)
    path = os.environ.get("ASSYNCY_FAULT_FIGURES")
    if path:  # one line per figure, also from xdist workers
        with open(path, "a") as out:
            out.write(text + "\n")


def requested_epns(result) -> list[str]:
    """EPNs of the repatriation runs a sensor result requests (none for a SkipReason)."""
    if not isinstance(result, dg.SensorResult):
        return []
    return [e for r in result.run_requests if r.job_name == REPATRIATION_JOB for e in batch_epns(r.run_config)]


def tree_snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """Every entry under `root` (but `skip`): relative path -> (size, mtime_ns); symlinks not followed."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if skip is not None:
            dirnames[:] = [d for d in dirnames if (here / d) != skip]
        for name in dirnames + filenames:
            path = here / name
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            snap[str(path.relative_to(root))] = (
                st.st_size if not path.is_dir() else 0,
                st.st_mtime_ns if not path.is_dir() else 0,
            )
    return snap
