"""Interrupted transfers through a real sshd + rrsync + rsync (transfer/process.py): nothing is left running,
and the next run completes the file."""

from __future__ import annotations

import filecmp
import subprocess
import sys
import threading
from pathlib import Path

import dagster as dg
import psutil
import pytest

from assyncy_dagster.transfer import PARTIAL_DIR, ProgressUpdate, TransferTerminated, terminate_all_transfers
from assyncy_dagster_demo.testing.sshd import make_source_tree
from tests.support.helpers import live_processes_mentioning, live_processes_of, wait_for

BIG = "frames/big.cbf"
BIG_SIZE = 16 << 20
# 4 MiB/s makes the 16 MiB file take ~4 s, so it is still in flight when rsync first reports progress (~1 s).
SLOW = ["--bwlimit=4m"]


def assert_nothing_left_running(sftp_source, epn: str, destination: Path) -> None:
    """No rsync or ssh of ours is alive once the call returned, and the server side follows within seconds."""
    assert live_processes_mentioning(str(destination), epn) == []
    if sftp_source.sshd.user != psutil.Process().username():
        try:
            server = sftp_source.sshd.pid  # this test's sshd: other tests' sessions use the same account
            wait_for(lambda: not live_processes_of(sftp_source.sshd.user, under=server), 10, "the server side to exit")
        except AssertionError:
            left = live_processes_of(sftp_source.sshd.user, under=server)
            raise AssertionError(f"still running as {sftp_source.sshd.user}: {left}") from None


class Stop(Exception):
    pass


def big_tree(sftp_source) -> tuple[str, Path]:
    epn = sftp_source.new_epn()
    return epn, make_source_tree(sftp_source.root, epn, {BIG: BIG_SIZE, "frames/img_0001.cbf": 1_000})


def raise_once_bytes_flow(exc: BaseException):
    def on_progress(update: ProgressUpdate) -> None:
        if update.bytes_transferred > 1_000:  # the big file is in flight
            raise exc

    return on_progress


def test_interrupted_file_is_kept_aside_and_resumed_byte_identical(sftp_source, tmp_path):
    epn, folder = big_tree(sftp_source)
    destination = tmp_path / "data"
    client = sftp_source.rsync_client(progress_interval=0)
    with pytest.raises(Stop):
        client.transfer(epn, destination, dry_run=False, on_progress=raise_once_bytes_flow(Stop()), extra_args=SLOW)
    assert not (destination / BIG).exists()
    partial = destination / "frames" / PARTIAL_DIR / "big.cbf"
    assert 0 < partial.stat().st_size < BIG_SIZE
    client.transfer(epn, destination, dry_run=False)
    assert filecmp.cmp(folder / BIG, destination / BIG, shallow=False)
    assert not (destination / "frames" / PARTIAL_DIR).exists()


@pytest.mark.parametrize(
    "interruption", [KeyboardInterrupt, dg.DagsterExecutionInterruptedError], ids=["ctrl-c", "dagster-run-terminated"]
)
def test_interruption_mid_transfer_leaves_no_process_and_rerun_completes(sftp_source, tmp_path, interruption):
    epn, folder = big_tree(sftp_source)
    destination = tmp_path / "data"
    client = sftp_source.rsync_client(progress_interval=0)
    with pytest.raises(interruption):
        client.transfer(
            epn, destination, dry_run=False, on_progress=raise_once_bytes_flow(interruption()), extra_args=SLOW
        )
    assert_nothing_left_running(sftp_source, epn, destination)
    assert not (destination / BIG).exists()
    client.transfer(epn, destination, dry_run=False)
    assert filecmp.cmp(folder / BIG, destination / BIG, shallow=False)


def test_terminate_all_transfers_from_another_thread_stops_the_transfer(sftp_source, tmp_path):
    epn, folder = big_tree(sftp_source)
    destination = tmp_path / "data"
    stopped: list[int] = []

    def stop_when_bytes_arrive() -> None:
        # rsync writes the file in flight to a hidden temp file beside its final name.
        wait_for(
            lambda: (
                any(p.stat().st_size > 0 for p in (destination / "frames").glob(".big.cbf.*"))
                if (destination / "frames").is_dir()
                else False
            ),
            10,
            "bytes of the big file",
        )
        stopped.append(terminate_all_transfers())

    watcher = threading.Thread(target=stop_when_bytes_arrive, daemon=True)
    watcher.start()
    client = sftp_source.rsync_client()
    with pytest.raises(TransferTerminated, match=f"EPN {epn}"):
        client.transfer(epn, destination, dry_run=False, extra_args=SLOW)
    watcher.join(timeout=10)
    assert stopped == [1]
    assert_nothing_left_running(sftp_source, epn, destination)
    assert not (destination / BIG).exists()
    client.transfer(epn, destination, dry_run=False)
    assert filecmp.cmp(folder / BIG, destination / BIG, shallow=False)


KILLED_OUTRIGHT = """
import sys
from pathlib import Path
from assyncy_dagster.transfer import RsyncClient, SshEndpoint

host, port, user, key, known_hosts, root, epn, destination, *extra = sys.argv[1:]
endpoint = SshEndpoint(host, int(port), user, Path(key), Path(known_hosts), root)

def announce(update):
    if update.bytes_transferred > 1_000:
        print("flowing", flush=True)

RsyncClient(endpoint, progress_interval=0).transfer(epn, Path(destination), dry_run=False, on_progress=announce,
                                                    extra_args=extra)
"""


def test_transfer_stops_when_its_process_is_killed_outright(sftp_source, tmp_path):
    """A SIGKILL (or the OOM killer) gives Python no chance to clean up; rsync must still not outlive it."""
    epn, folder = big_tree(sftp_source)
    destination = tmp_path / "data"
    ep = sftp_source.endpoint
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILLED_OUTRIGHT,
            ep.host,
            str(ep.port),
            ep.user,
            str(ep.key_file),
            str(ep.known_hosts_file),
            ep.source_root,
            epn,
            str(destination),
            *SLOW,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "flowing"
        assert live_processes_mentioning(str(destination)), "rsync should be running before the kill"
    finally:
        child.kill()
        child.wait()
    wait_for(lambda: not live_processes_mentioning(str(destination), epn), 10, "rsync to follow its parent")
    assert not (destination / BIG).exists()
    sftp_source.rsync_client().transfer(epn, destination, dry_run=False)
    assert filecmp.cmp(folder / BIG, destination / BIG, shallow=False)
