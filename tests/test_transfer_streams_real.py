"""Parallel streams against the real sshd: same result as one rsync, and an interruption stops them all."""

import filecmp
import signal
import subprocess

import pytest
from helpers import live_processes_mentioning, running, transfer_started, wait_for
from test_e2e_cli import BIN, MATERIALIZE, run
from test_repatriation import epn_data_metadata, failure_text

from assyncy_dagster.testing.sshd import make_source_tree
from assyncy_dagster.testing.stack import mx_frames

STREAMS = {"transfer-streams": 4, "transfer-streams-min-mib": 0}


def frames_in_folders(folders: int = 8, per_folder: int = 8, size: int = 64 * 1024) -> dict:
    files = mx_frames(0, 0)  # the log, `.info` and the hidden clutter
    files.update({f"run_{f}/img_{i:03d}.cbf": size + f * 1024 + i for f in range(folders) for i in range(per_folder)})
    return files


def same_tree(source, destination) -> list[str]:
    """Relative paths whose bytes differ or that are missing (hidden files excepted, `.info` kept)."""
    wrong = []
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        if path.is_dir() or any(p.startswith(".") and p != ".info" for p in relative.parts):
            continue
        if not (destination / relative).is_file() or not filecmp.cmp(path, destination / relative, shallow=False):
            wrong.append(str(relative))
    return wrong


def test_four_streams_bring_home_exactly_what_one_rsync_does(stack):
    stack.configure(**STREAMS)
    make_source_tree(stack.source, "12282a", frames_in_folders())
    result = stack.materialize("12282a")
    assert result.success, failure_text(result)
    meta = epn_data_metadata(result)
    assert meta["streams"] == 4
    assert meta["files_transferred"] == 66 == meta["files_at_destination"]  # 64 frames, the log, .info
    dest = stack.destination("ny79", "12282a")
    assert same_tree(stack.source / "12282a", dest) == []
    assert not (dest / ".DS_Store").exists()
    assert stack.ignored() == ["12282a"]


def test_an_epn_below_the_threshold_uses_one_rsync(stack):
    stack.configure(**{"transfer-streams": 4, "transfer-streams-min-mib": 1024})
    stack.lay_out("12282a")
    result = stack.materialize("12282a")
    assert result.success and epn_data_metadata(result)["streams"] == 1


@pytest.mark.slow
def test_interrupting_a_four_stream_transfer_stops_every_stream_then_a_rerun_completes(stack):
    # 1 MiB/s per rsync: the four streams take about 8 s, plenty of time to interrupt them.
    stack.configure(**STREAMS, **{"rsync-bwlimit-kib": 1024})
    make_source_tree(stack.source, "12282a", frames_in_folders(size=512 * 1024))
    assert run([str(BIN / "assyncy"), "add-epn", "12282a"]).returncode == 0
    dest = stack.destination("ny79", "12282a")

    def streams_running() -> set[str]:
        return {arg for line in live_processes_mentioning(str(dest)) for arg in line.split()
                if arg.startswith("--files-from=")}

    with running([*MATERIALIZE, "12282a"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        wait_for(lambda: len(streams_running()) == 4, 120, "four rsync streams", proc=proc)
        wait_for(lambda: transfer_started(dest), 60, "the streams to write", proc=proc)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode != 0
    wait_for(lambda: not live_processes_mentioning(str(dest)), 10, "every rsync and ssh to end")
    assert stack.ignored() == [], "an interrupted transfer must not be recorded"
    assert same_tree(stack.source / "12282a", dest), "the interruption came too late to test anything"

    stack.configure(**{"rsync-bwlimit-kib": None})
    again = run([*MATERIALIZE, "12282a"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert same_tree(stack.source / "12282a", dest) == []
    assert stack.ignored() == ["12282a"]
