"""Small helpers shared by the fault tests (tests/faults/); imported as `faultkit`.

The fixtures (`stack`, `sshd`, `smtp_sink`, ...) come from tests/conftest.py as
for every other test; `helpers` (tests/helpers.py) is importable too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import dagster as dg
from helpers import ticker  # noqa: F401 (re-exported for the fault tests)

from assyncy_dagster.names import ALERT_JOB, REPATRIATION_JOB

BIN = Path(sys.executable).parent
RESULTS: list[str] = []  # every test's figure, repeated in the terminal summary (see conftest.py here)


def figure(text: str) -> None:
    """Print a test's figure (shown with -s) and keep it for the run's final summary."""
    print(f"\nFIGURE {text}", flush=True)
    RESULTS.append(text)
    path = os.environ.get("ASSYNCY_FAULT_FIGURES")
    if path:  # one line per figure, also from xdist workers
        with open(path, "a") as out:
            out.write(text + "\n")


def requested_epns(result) -> list[str]:
    """EPNs of the repatriation runs a sensor result requests (none for a SkipReason)."""
    if not isinstance(result, dg.SensorResult):
        return []
    return [e for r in result.run_requests if r.job_name == REPATRIATION_JOB
            for e in r.run_config["ops"]["repatriate_epns"]["config"]["epns"]]


def alert_requests(result) -> list[dg.RunRequest]:
    if not isinstance(result, dg.SensorResult):
        return []
    return [r for r in result.run_requests if r.job_name == ALERT_JOB]


def visible_files(root: Path) -> dict[str, Path]:
    """Files rsync should bring: relative path -> path, hidden ones left out except `.info`,
    and nothing under `.rsync-partial/`."""
    found = {}
    if not root.exists():
        return found
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        rel = path.relative_to(root)
        if ".rsync-partial" in rel.parts:
            continue
        if any(part.startswith(".") and part != ".info" for part in rel.parts):
            continue
        found[str(rel)] = path
    return found


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
            snap[str(path.relative_to(root))] = (st.st_size if not path.is_dir() else 0,
                                                 st.st_mtime_ns if not path.is_dir() else 0)
    return snap
