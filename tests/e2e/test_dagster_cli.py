"""End to end through the real `assyncy` and `dagster` commands: definitions validate,
asset materialize, and an interruption (one rsync or four streams) that a rerun completes."""

import os
import shutil
import signal
import subprocess

import pytest

from assyncy_dagster_demo.testing.sshd import make_source_tree
from assyncy_dagster_demo.testing.stack import ETC
from tests.support.helpers import (
    BIN,
    command,
    frames_in_folders,
    live_processes_mentioning,
    materialize_argv,
    running,
    transfer_started,
    tree_differences,
    wait_for,
)

MATERIALIZE = materialize_argv(select="portal_visits,epn_data")  # the partition follows

pytestmark = pytest.mark.slow


def test_add_epn_then_dagster_asset_materialize_repatriates_it(stack):
    stack.lay_out("12282a")
    added = command("assyncy", "add-epn", "12282a")
    assert added.returncode == 0, added.stderr
    result = command(*MATERIALIZE, "12282a")
    assert result.returncode == 0, result.stderr[-3000:]
    dest = stack.destination("ny79", "12282a")
    assert (dest / "frames" / "img_0001.cbf").read_bytes() == (stack.source / "12282a/frames/img_0001.cbf").read_bytes()
    assert stack.ignored() == ["12282a"], "verified by the matches_source check, then recorded"


def test_sigterm_stops_rsync_and_a_rerun_completes_byte_identical(stack):
    stack.configure(**{"rsync-bwlimit-kib": 2048})  # ~2 MiB/s: slow enough to interrupt
    stack.lay_out("12282a", frames=4, size=4 * 1024 * 1024)
    assert command("assyncy", "add-epn", "12282a").returncode == 0
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
    rerun = command(*MATERIALIZE, "12282a")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for frame in (stack.source / "12282a" / "frames").glob("img_*.cbf"):
        assert (dest / "frames" / frame.name).read_bytes() == frame.read_bytes()
    assert stack.ignored() == ["12282a"]


@pytest.mark.slow
def test_dagster_definitions_validate_passes_with_the_sample_config(tmp_path):
    shutil.copy(ETC / "config.yml", tmp_path / "config.yml")
    env = os.environ | {"ASSYNCY_CONFIG": str(tmp_path / "config.yml"), "DAGSTER_HOME": str(tmp_path)}
    ok = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", "-m", "assyncy_dagster.definitions"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    env["ASSYNCY_CONFIG"] = str(tmp_path / "missing.yml")
    bad = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", "-m", "assyncy_dagster.definitions"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert bad.returncode != 0
    assert "missing.yml: config file not found" in bad.stdout + bad.stderr


@pytest.mark.slow
def test_interrupting_a_four_stream_transfer_stops_every_stream_then_a_rerun_completes(stack):
    # 1 MiB/s per rsync: the four streams take about 8 s, plenty of time to interrupt them.
    stack.configure(**{"transfer-streams": 4, "transfer-streams-min-mib": 0, "rsync-bwlimit-kib": 1024})
    make_source_tree(stack.source, "12282a", frames_in_folders(size=512 * 1024))
    assert command("assyncy", "add-epn", "12282a").returncode == 0
    dest = stack.destination("ny79", "12282a")

    def streams_running() -> set[str]:
        return {
            arg
            for line in live_processes_mentioning(str(dest))
            for arg in line.split()
            if arg.startswith("--files-from=")
        }

    with running([*MATERIALIZE, "12282a"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        wait_for(lambda: len(streams_running()) == 4, 120, "four rsync streams", proc=proc)
        wait_for(lambda: transfer_started(dest), 60, "the streams to write", proc=proc)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode != 0
    wait_for(lambda: not live_processes_mentioning(str(dest)), 10, "every rsync and ssh to end")
    assert stack.ignored() == [], "an interrupted transfer must not be recorded"
    assert tree_differences(stack.source / "12282a", dest), "the interruption came too late to test anything"

    stack.configure(**{"rsync-bwlimit-kib": None})
    again = command(*MATERIALIZE, "12282a")
    assert again.returncode == 0, again.stderr[-3000:]
    assert tree_differences(stack.source / "12282a", dest) == []
    assert stack.ignored() == ["12282a"]
