"""End to end through the real `assyncy` and `dagster` commands."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import live_processes_mentioning, running, transfer_started, wait_for

BIN = Path(sys.executable).parent
MATERIALIZE = [
    str(BIN / "dagster"),
    "asset",
    "materialize",
    "-m",
    "assyncy_dagster.definitions",
    "--select",
    "portal_visits,epn_data",
    "--partition",
]

pytestmark = pytest.mark.slow


def run(argv, timeout=180):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())






def test_add_epn_then_dagster_asset_materialize_repatriates_it(stack):
    stack.lay_out("12282a")
    added = run([str(BIN / "assyncy"), "add-epn", "12282a"])
    assert added.returncode == 0, added.stderr
    result = run([*MATERIALIZE, "12282a"])
    assert result.returncode == 0, result.stderr[-3000:]
    dest = stack.destination("ny79", "12282a")
    assert (dest / "frames" / "img_0001.cbf").read_bytes() == (stack.source / "12282a/frames/img_0001.cbf").read_bytes()
    assert stack.ignored() == ["12282a"], "verified by the matches_source check, then recorded"


def test_sigterm_stops_rsync_and_a_rerun_completes_byte_identical(stack):
    stack.configure(**{"rsync-bwlimit-kib": 2048})  # ~2 MiB/s: slow enough to interrupt
    stack.lay_out("12282a", frames=4, size=4 * 1024 * 1024)
    assert run([str(BIN / "assyncy"), "add-epn", "12282a"]).returncode == 0
    dest = stack.destination("ny79", "12282a")
    with running([*MATERIALIZE, "12282a"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        wait_for(lambda: transfer_started(dest), 120, "the transfer to start", proc=proc)
        assert live_processes_mentioning(str(dest)), "rsync should be running"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode != 0
    wait_for(lambda: not live_processes_mentioning(str(dest)), 10, "rsync and ssh to end")
    assert stack.ignored() == [], "an interrupted transfer must not be recorded"

    stack.configure(**{"rsync-bwlimit-kib": None})
    rerun = run([*MATERIALIZE, "12282a"])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for frame in (stack.source / "12282a" / "frames").glob("img_*.cbf"):
        assert (dest / "frames" / frame.name).read_bytes() == frame.read_bytes()
    assert stack.ignored() == ["12282a"]
