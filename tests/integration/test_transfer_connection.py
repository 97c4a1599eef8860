"""A batch's transfers over one shared ssh connection (transfer/connection.py), through a real sshd +
rrsync: they really share it, a stopped transfer stops alone, and nothing of ours or the host's
outlives the batch, however its process ends."""

from __future__ import annotations

import dataclasses
import filecmp
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from assyncy_dagster.transfer import TransferTerminated, terminate_all_transfers
from assyncy_dagster.transfer.connection import shared_connection
from assyncy_dagster_demo.testing.sshd import make_source_tree
from tests.support.helpers import live_processes_mentioning, live_processes_of, wait_for

FILES = {"frames/a.cbf": 200_000, "frames/b.cbf": 200_000, "info.log": b"done\n"}


def master_is_up(socket: Path) -> bool:
    return (
        socket.exists()
        and subprocess.run(["ssh", "-O", "check", "-S", str(socket), "x"], capture_output=True).returncode == 0
    )


def host_side_gone(sftp_source) -> None:
    if sftp_source.sshd.user != psutil.Process().username():
        wait_for(
            lambda: not live_processes_of(sftp_source.sshd.user, under=sftp_source.sshd.pid),
            10,
            "the host's side of the connection to end",
        )


def test_transfers_share_the_connection_and_nothing_outlives_it(sftp_source, tmp_path):
    epns = [sftp_source.new_epn() for _ in range(2)]
    for epn in epns:
        make_source_tree(sftp_source.root, epn, FILES)
    with shared_connection(sftp_source.endpoint) as shared:
        assert shared.control_path is not None
        folder = shared.control_path.parent
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, "the control socket's folder must be private"
        wait_for(lambda: master_is_up(shared.control_path), 15, "the shared connection to be up")
        # Port 1 refuses every connection: only the shared one can carry these transfers.
        through_master_only = dataclasses.replace(shared, port=1)
        client = sftp_source.rsync_client()
        client.endpoint = through_master_only
        for epn in epns:
            client.transfer(epn, tmp_path / epn, dry_run=False)
            assert filecmp.cmp(sftp_source.root / epn / "frames/a.cbf", tmp_path / epn / "frames/a.cbf", shallow=False)
    assert not folder.exists()
    assert live_processes_mentioning(str(folder)) == []
    host_side_gone(sftp_source)


def test_a_stopped_transfer_stops_alone_and_the_batch_end_stops_the_master(sftp_source, tmp_path):
    epn = sftp_source.new_epn()
    make_source_tree(sftp_source.root, epn, {"frames/big.cbf": 8 << 20})
    destination = tmp_path / "data"
    stopped: list[int] = []

    def stop_when_bytes_arrive() -> None:
        wait_for(
            lambda: any((destination / "frames").glob(".big.cbf.*")) if destination.is_dir() else False, 15, "bytes"
        )
        stopped.append(terminate_all_transfers())

    with shared_connection(sftp_source.endpoint) as shared:
        wait_for(lambda: master_is_up(shared.control_path), 15, "the shared connection to be up")
        client = sftp_source.rsync_client()
        client.endpoint = shared
        watcher = threading.Thread(target=stop_when_bytes_arrive, daemon=True)
        watcher.start()
        with pytest.raises(TransferTerminated):
            client.transfer(epn, destination, dry_run=False, extra_args=["--bwlimit=2m"])
        watcher.join(timeout=10)
        assert stopped == [1]
        assert live_processes_mentioning(str(destination)) == [], "rsync's group (rsync and its ssh) must be gone"
        assert master_is_up(shared.control_path), "the master serves the batch's next transfer"
        client.transfer(epn, destination, dry_run=False)
    assert live_processes_mentioning(str(shared.control_path.parent)) == []
    host_side_gone(sftp_source)


KILLED_OUTRIGHT = """
import sys, time
from pathlib import Path
from assyncy_dagster.transfer import SshEndpoint
from assyncy_dagster.transfer.connection import shared_connection

host, port, user, key, known_hosts, root = sys.argv[1:]
with shared_connection(SshEndpoint(host, int(port), user, Path(key), Path(known_hosts), root)) as shared:
    print(shared.control_path, flush=True)
    time.sleep(60)
"""


def holding_a_shared_connection(sftp_source) -> tuple[subprocess.Popen[str], Path]:
    """A process holding a shared connection (KILLED_OUTRIGHT), and its master's socket once it is up."""
    ep = sftp_source.endpoint
    args = [ep.host, str(ep.port), ep.user, str(ep.key_file), str(ep.known_hosts_file), ep.source_root]
    child = subprocess.Popen([sys.executable, "-c", KILLED_OUTRIGHT, *args], stdout=subprocess.PIPE, text=True)
    try:
        socket = Path(child.stdout.readline().strip())
        wait_for(lambda: master_is_up(socket), 15, "the shared connection to be up")
    except BaseException:
        child.kill()
        child.wait()
        raise
    return child, socket


def test_the_master_and_its_folder_follow_its_process_killed_outright(sftp_source):
    child, socket = holding_a_shared_connection(sftp_source)
    child.kill()
    child.wait()
    wait_for(lambda: not live_processes_mentioning(str(socket)), 10, "the master to follow its parent")
    # No `finally` ran: the process's watch removes the private folder (socket, master.log).
    wait_for(lambda: not socket.parent.exists(), 10, "the control socket's folder to be removed")
    host_side_gone(sftp_source)


def test_a_master_deaf_to_its_parent_s_death_is_killed_by_the_watch_before_its_folder_goes(sftp_source):
    child, socket = holding_a_shared_connection(sftp_source)
    master = None
    try:
        [master] = [int(p.split(":")[0]) for p in live_processes_mentioning(str(socket)) if "ControlMaster=yes" in p]
        os.kill(master, signal.SIGSTOP)  # it cannot act on the parent-death SIGTERM: a hung or traced master
        child.kill()
        child.wait()
        wait_for(lambda: not live_processes_mentioning(str(socket)), 15, "the watch to SIGKILL the master")
        wait_for(lambda: not socket.parent.exists(), 5, "the control socket's folder to be removed")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if master is not None and live_processes_mentioning(str(socket)):
            os.kill(master, signal.SIGKILL)
    host_side_gone(sftp_source)
