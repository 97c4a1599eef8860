"""Transfers through a real sshd + rrsync + rsync: what arrives, what never does, and what is left running."""

from __future__ import annotations

import filecmp
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest

from assyncy_dagster.resources.sftp import SftpResource
from assyncy_dagster.rsync import (
    PARTIAL_DIR,
    HostKeyError,
    ProgressUpdate,
    RsyncError,
    SshConfigError,
    SshEndpoint,
    TransferTerminated,
    compare_manifests,
    local_manifest,
    run_rsync,
    terminate_all_transfers,
)
from assyncy_dagster.testing.sshd import make_source_tree

MX_FILES: dict[str, bytes | int] = {
    "frames/img_0001.cbf": 40_000,
    "frames/img_0002.cbf": 40_000,
    "frames/sub/img 0003.cbf": 1_000,  # a space in a name
    ".info": b"beamline: MX2\n",
    "frames/.info": b"run 1\n",
    ".DS_Store": b"finder junk",
    "frames/._img_0001.cbf": b"apple double",
    ".snapshot/old.cbf": b"hidden folder",
    "processing/autoproc.log": b"done\n",
}
EXPECTED = {"frames/img_0001.cbf": 40_000, "frames/img_0002.cbf": 40_000, "frames/sub/img 0003.cbf": 1_000,
            ".info": 14, "frames/.info": 6, "processing/autoproc.log": 5}
BIG = "frames/big.cbf"
BIG_SIZE = 16 << 20
# 4 MiB/s makes the 16 MiB file take ~4 s, so it is still in flight when rsync first reports progress (~1 s).
SLOW = ["--bwlimit=4m"]


def all_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def living_processes() -> list[psutil.Process]:
    # Zombies are dead already; init reaps orphaned ones in its own time.
    return [p for p in psutil.process_iter(["pid", "cmdline", "username", "status"])
            if p.info["status"] != psutil.STATUS_ZOMBIE and p.pid != os.getpid()]


def processes_mentioning(*needles: str) -> list[str]:
    return [f"{p.pid}: {' '.join(p.info['cmdline'])}" for p in living_processes()
            if any(needle in " ".join(p.info["cmdline"] or []) for needle in needles)]


def processes_of(user: str) -> list[str]:
    return [f"{p.pid}: {' '.join(p.info['cmdline'] or [])}" for p in living_processes() if p.info["username"] == user]


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def assert_nothing_left_running(sftp_source, epn: str, destination: Path) -> None:
    """No rsync or ssh of ours is alive once the call returned, and the server side follows within seconds."""
    assert processes_mentioning(str(destination), epn) == []
    if sftp_source.sshd.user != psutil.Process().username():
        try:
            wait_until(lambda: not processes_of(sftp_source.sshd.user), what="the server side to exit")
        except AssertionError:
            raise AssertionError(f"still running as {sftp_source.sshd.user}: {processes_of(sftp_source.sshd.user)}") from None


@pytest.fixture
def epn_tree(sftp_source):
    epn = sftp_source.new_epn()
    folder = make_source_tree(sftp_source.root, epn, MX_FILES)
    return epn, folder


# -- what a transfer copies -----------------------------------------------------


def test_dry_run_writes_nothing_under_destination(sftp_source, epn_tree, tmp_path):
    epn, _ = epn_tree
    destination = tmp_path / "ny79" / epn / "data"
    result = sftp_source.client().transfer(epn, destination, dry_run=True)
    assert result.exit_code == 0
    assert result.stats is not None and result.stats.total_regular_files == len(EXPECTED)
    assert not (tmp_path / "ny79").exists()


def test_transfer_copies_data_and_info_files_but_no_hidden_files(sftp_source, epn_tree, tmp_path):
    epn, _ = epn_tree
    destination = tmp_path / "ny79" / epn / "data"
    result = sftp_source.client().transfer(epn, destination, dry_run=False)
    assert all_files(destination) == set(EXPECTED)
    assert local_manifest(destination) == EXPECTED
    assert result.stats is not None and result.stats.files_transferred == len(EXPECTED)


def test_transferred_files_are_byte_identical(sftp_source, epn_tree, tmp_path):
    epn, folder = epn_tree
    destination = tmp_path / "data"
    sftp_source.client().transfer(epn, destination, dry_run=False)
    for relative in EXPECTED:
        assert filecmp.cmp(folder / relative, destination / relative, shallow=False), relative


def test_transferred_folders_are_setgid_and_not_world_writable(sftp_source, epn_tree, tmp_path):
    epn, _ = epn_tree
    destination = tmp_path / "data"
    sftp_source.client().transfer(epn, destination, dry_run=False)
    for folder in (destination, destination / "frames", destination / "frames" / "sub"):
        mode = folder.stat().st_mode
        assert mode & stat.S_ISGID, folder
        assert mode & stat.S_IWGRP and mode & stat.S_IXGRP, folder
        assert not mode & (stat.S_IWOTH | stat.S_IXOTH), folder
    for relative in EXPECTED:
        mode = (destination / relative).stat().st_mode
        assert mode & stat.S_IWGRP and not mode & (stat.S_IWOTH | stat.S_IXOTH), relative


def test_second_transfer_copies_nothing(sftp_source, epn_tree, tmp_path):
    epn, _ = epn_tree
    client = sftp_source.client()
    client.transfer(epn, tmp_path / "data", dry_run=False)
    again = client.transfer(epn, tmp_path / "data", dry_run=False)
    assert again.stats is not None
    assert again.stats.files_transferred == 0 and again.stats.literal_data == 0


def test_source_file_that_changed_size_is_fetched_again(sftp_source, epn_tree, tmp_path):
    epn, folder = epn_tree
    client = sftp_source.client()
    client.transfer(epn, tmp_path / "data", dry_run=False)
    (folder / "frames" / "img_0002.cbf").write_bytes(b"rewritten")
    again = client.transfer(epn, tmp_path / "data", dry_run=False)
    assert again.stats is not None and again.stats.files_transferred == 1
    assert (tmp_path / "data" / "frames" / "img_0002.cbf").read_bytes() == b"rewritten"


def test_source_manifest_lists_what_the_transfer_copies(sftp_source, epn_tree):
    epn, _ = epn_tree
    assert sftp_source.client().source_manifest(epn) == EXPECTED


def test_verification_catches_a_file_deleted_from_the_destination(sftp_source, epn_tree, tmp_path):
    epn, _ = epn_tree
    client = sftp_source.client()
    client.transfer(epn, tmp_path / "data", dry_run=False)
    assert compare_manifests(client.source_manifest(epn), local_manifest(tmp_path / "data")).ok
    (tmp_path / "data" / "frames" / "img_0001.cbf").unlink()
    diff = compare_manifests(client.source_manifest(epn), local_manifest(tmp_path / "data"))
    assert not diff.ok and diff.missing == ["frames/img_0001.cbf"]
    assert "frames/img_0001.cbf" in diff.summary()


def test_progress_is_reported_at_most_once_per_interval_plus_the_last(sftp_source, tmp_path):
    epn = sftp_source.new_epn()
    make_source_tree(sftp_source.root, epn, {f"frames/img_{i:04d}.cbf": 1_000 for i in range(300)})
    updates: list[ProgressUpdate] = []
    sftp_source.client(progress_interval=3600).transfer(epn, tmp_path / "data", dry_run=False,
                                                        on_progress=updates.append)
    assert 1 <= len(updates) <= 2
    assert updates[-1].bytes_transferred == 300_000 and updates[-1].files_transferred == 300


# -- the SFTP host as an adversary ------------------------------------------------


def test_listing_drops_names_that_are_not_epns(sftp_source, caplog):
    good = sftp_source.new_epn()
    for name in (good, "12282a;rm -rf x", "..weird", "notanepn", ".snapshot", "12282A"):
        (sftp_source.root / name).mkdir()
        (sftp_source.root / name).chmod(0o755)
    (sftp_source.root / "12345b").write_bytes(b"a file, not a folder")
    (sftp_source.root / "12345b").chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert sftp_source.client().list_epns() == [good]
    assert "'12282a;rm -rf x'" in caplog.text and "'notanepn'" in caplog.text


@pytest.mark.parametrize("known_hosts", ["other-key", "empty"])
def test_wrong_or_missing_host_key_fails_with_host_key_error(sftp_source, epn_tree, tmp_path, known_hosts):
    epn, _ = epn_tree
    pinned = tmp_path / "known_hosts"
    if known_hosts == "other-key":
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
        key_type, key = (tmp_path / "other.pub").read_text().split()[:2]
        pinned.write_text(f"[{sftp_source.sshd.host}]:{sftp_source.sshd.port} {key_type} {key}\n")
    else:
        pinned.write_text("")
    endpoint = SshEndpoint(**{**sftp_source.endpoint.__dict__, "known_hosts_file": pinned})
    client = type(sftp_source.client())(endpoint)
    with pytest.raises(HostKeyError) as info:
        client.transfer(epn, tmp_path / "data", dry_run=False)
    assert str(pinned) in str(info.value) and "known-hosts-file" in str(info.value)
    assert not (tmp_path / "data").exists()


def test_sftp_account_is_read_only(sftp_source, epn_tree, tmp_path):
    epn, folder = epn_tree
    (tmp_path / "upload.cbf").write_bytes(b"should never arrive")
    endpoint = sftp_source.endpoint
    push = ["rsync", "-r", "-e", endpoint.rsync_shell(), str(tmp_path / "upload.cbf"),
            endpoint.remote(f"{endpoint.source_root}/{epn}/")]
    with pytest.raises(RsyncError) as info:
        run_rsync(push)
    assert "read-only" in str(info.value)
    assert not (folder / "upload.cbf").exists()


def test_missing_key_file_is_named_before_connecting(stack, tmp_path):
    stack.configure(**{"key-file": str(tmp_path / "no_such_key")})
    with pytest.raises(SshConfigError, match="no_such_key"):
        SftpResource().client()


def test_resource_lists_epns_through_the_real_host(stack):
    stack.lay_out("12282a", "14500a")
    assert SftpResource().client().list_epns() == ["12282a", "14500a"]


def test_an_edit_to_the_host_settings_applies_at_the_next_use(stack):
    stack.lay_out("12282a")
    resource = SftpResource()
    assert resource.client().list_epns() == ["12282a"]
    stack.configure(**{"ssh-port": 1})  # nothing listens there
    with pytest.raises(RsyncError):
        resource.client().list_epns()


# -- interruptions ----------------------------------------------------------------


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
    client = sftp_source.client(progress_interval=0)
    with pytest.raises(Stop):
        client.transfer(epn, destination, dry_run=False, on_progress=raise_once_bytes_flow(Stop()), extra_args=SLOW)
    assert not (destination / BIG).exists()
    partial = destination / "frames" / PARTIAL_DIR / "big.cbf"
    assert 0 < partial.stat().st_size < BIG_SIZE
    client.transfer(epn, destination, dry_run=False)
    assert filecmp.cmp(folder / BIG, destination / BIG, shallow=False)
    assert not (destination / "frames" / PARTIAL_DIR).exists()


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, dg.DagsterExecutionInterruptedError],
                         ids=["ctrl-c", "dagster-run-terminated"])
def test_interruption_mid_transfer_leaves_no_process_and_rerun_completes(sftp_source, tmp_path, interruption):
    epn, folder = big_tree(sftp_source)
    destination = tmp_path / "data"
    client = sftp_source.client(progress_interval=0)
    with pytest.raises(interruption):
        client.transfer(epn, destination, dry_run=False, on_progress=raise_once_bytes_flow(interruption()),
                        extra_args=SLOW)
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
        wait_until(lambda: any(p.stat().st_size > 0 for p in (destination / "frames").glob(".big.cbf.*"))
                   if (destination / "frames").is_dir() else False, what="bytes of the big file")
        stopped.append(terminate_all_transfers())

    watcher = threading.Thread(target=stop_when_bytes_arrive, daemon=True)
    watcher.start()
    client = sftp_source.client()
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
from assyncy_dagster.rsync import SftpClient, SshEndpoint

host, port, user, key, known_hosts, root, epn, destination, *extra = sys.argv[1:]
endpoint = SshEndpoint(host, int(port), user, Path(key), Path(known_hosts), root)

def announce(update):
    if update.bytes_transferred > 1_000:
        print("flowing", flush=True)

SftpClient(endpoint, progress_interval=0).transfer(epn, Path(destination), dry_run=False, on_progress=announce,
                                                   extra_args=extra)
"""


def test_transfer_stops_when_its_process_is_killed_outright(sftp_source, tmp_path):
    """A SIGKILL (or the OOM killer) gives Python no chance to clean up; rsync must still not outlive it."""
    epn, folder = big_tree(sftp_source)
    destination = tmp_path / "data"
    ep = sftp_source.endpoint
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_OUTRIGHT, ep.host, str(ep.port), ep.user, str(ep.key_file),
         str(ep.known_hosts_file), ep.source_root, epn, str(destination), *SLOW],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout.readline().strip() == "flowing"
        assert processes_mentioning(str(destination)), "rsync should be running before the kill"
    finally:
        child.kill()
        child.wait()
    wait_until(lambda: not processes_mentioning(str(destination), epn), what="rsync to follow its parent")
    assert not (destination / BIG).exists()
    sftp_source.client().transfer(epn, destination, dry_run=False)
    assert filecmp.cmp(folder / BIG, destination / BIG, shallow=False)
