"""Transfers through a real sshd + rrsync + rsync (transfer/client.py): what arrives, and what never does."""

from __future__ import annotations

import filecmp
import logging
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from assyncy_dagster.transfer import (
    HostKeyError,
    ProgressUpdate,
    RsyncError,
    SshEndpoint,
    compare_trees,
    local_tree,
    run_rsync,
)
from assyncy_dagster.transfer.manifests import files_of
from assyncy_dagster_demo.testing.sshd import make_source_tree

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
EXPECTED = {
    "frames/img_0001.cbf": 40_000,
    "frames/img_0002.cbf": 40_000,
    "frames/sub/img 0003.cbf": 1_000,
    ".info": 14,
    "frames/.info": 6,
    "processing/autoproc.log": 5,
}


def all_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def epn_tree(sftp_source):
    epn = sftp_source.new_epn()
    folder = make_source_tree(sftp_source.root, epn, MX_FILES)
    return epn, folder


# -- what a transfer copies -----------------------------------------------------


def test_dry_run_writes_nothing_under_destination(sftp_source, epn_tree, tmp_path):
    epn, _ = epn_tree
    destination = tmp_path / "ny79" / epn / "data"
    result = sftp_source.rsync_client().transfer(epn, destination, dry_run=True)
    assert result.exit_code == 0
    assert result.stats is not None and result.stats.total_regular_files == len(EXPECTED)
    assert not (tmp_path / "ny79").exists()


def test_transfer_copies_data_and_info_files_but_no_hidden_files(sftp_source, epn_tree, tmp_path):
    epn, _ = epn_tree
    destination = tmp_path / "ny79" / epn / "data"
    result = sftp_source.rsync_client().transfer(epn, destination, dry_run=False)
    assert all_files(destination) == set(EXPECTED)
    assert {path: entry.size for path, entry in files_of(local_tree(destination)).items()} == EXPECTED
    assert result.stats is not None and result.stats.files_transferred == len(EXPECTED)


def test_every_file_sent_comes_with_the_senders_checksum_as_xxhsum_computes_it(sftp_source, epn_tree, tmp_path):
    epn, folder = epn_tree
    result = sftp_source.rsync_client().transfer(epn, tmp_path / "data", dry_run=False)
    sent = files_of(result.tree or {})
    assert set(sent) == set(EXPECTED)
    for relative, entry in sent.items():
        xxhsum = subprocess.run(["xxhsum", "-H2", folder / relative], capture_output=True, text=True, check=True)
        assert entry.checksum == xxhsum.stdout.split()[0], relative
        assert entry.mtime == int((folder / relative).stat().st_mtime), relative


def test_a_frame_rewritten_at_the_same_size_is_fetched_again_alone(sftp_source, epn_tree, tmp_path):
    epn, folder = epn_tree
    client = sftp_source.rsync_client()
    client.transfer(epn, tmp_path / "data", dry_run=False)
    frame = folder / "frames" / "img_0002.cbf"
    frame.write_bytes(b"y" * frame.stat().st_size)  # same size, new content...
    later = time.time() + 60
    os.utime(frame, (later, later))  # ...and a later mtime, as a rewrite minutes after the first copy has
    again = client.transfer(epn, tmp_path / "data", dry_run=False)
    assert again.sent == [("frames/img_0002.cbf", False)]
    assert (tmp_path / "data" / "frames" / "img_0002.cbf").read_bytes() == frame.read_bytes()


def test_transferred_files_are_byte_identical(sftp_source, epn_tree, tmp_path):
    epn, folder = epn_tree
    destination = tmp_path / "data"
    sftp_source.rsync_client().transfer(epn, destination, dry_run=False)
    for relative in EXPECTED:
        assert filecmp.cmp(folder / relative, destination / relative, shallow=False), relative


def test_transferred_folders_are_setgid_and_not_world_writable(sftp_source, epn_tree, tmp_path):
    epn, _ = epn_tree
    destination = tmp_path / "data"
    sftp_source.rsync_client().transfer(epn, destination, dry_run=False)
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
    client = sftp_source.rsync_client()
    client.transfer(epn, tmp_path / "data", dry_run=False)
    again = client.transfer(epn, tmp_path / "data", dry_run=False)
    assert again.stats is not None
    assert again.stats.files_transferred == 0 and again.stats.literal_data == 0


def test_the_client_fetches_again_a_source_file_that_changed_size(sftp_source, epn_tree, tmp_path):
    epn, folder = epn_tree
    client = sftp_source.rsync_client()
    client.transfer(epn, tmp_path / "data", dry_run=False)
    (folder / "frames" / "img_0002.cbf").write_bytes(b"rewritten")
    again = client.transfer(epn, tmp_path / "data", dry_run=False)
    assert again.stats is not None and again.stats.files_transferred == 1
    assert (tmp_path / "data" / "frames" / "img_0002.cbf").read_bytes() == b"rewritten"


def test_source_tree_lists_what_the_transfer_copies(sftp_source, epn_tree):
    epn, _ = epn_tree
    tree = sftp_source.rsync_client().source_tree(epn)
    assert {path: entry.size for path, entry in files_of(tree).items()} == EXPECTED


def test_verification_catches_a_file_deleted_from_the_destination(sftp_source, epn_tree, tmp_path):
    epn, _ = epn_tree
    client = sftp_source.rsync_client()
    client.transfer(epn, tmp_path / "data", dry_run=False)
    assert compare_trees(client.source_tree(epn), local_tree(tmp_path / "data")).ok
    (tmp_path / "data" / "frames" / "img_0001.cbf").unlink()
    diff = compare_trees(client.source_tree(epn), local_tree(tmp_path / "data"))
    assert not diff.ok and diff.missing == ["frames/img_0001.cbf"]
    assert "frames/img_0001.cbf" in diff.summary()


def test_progress_is_reported_at_most_once_per_interval_plus_the_last(sftp_source, tmp_path):
    """Only the progress records reported are parsed; a file named like one is still a file."""
    epn = sftp_source.new_epn()
    lookalike = " 1000 100%  1.00kBps  0:00:00 (xfr#1, to-chk=0)"  # no "/": one file
    make_source_tree(
        sftp_source.root, epn, {**{f"frames/img_{i:04d}.cbf": 1_000 for i in range(299)}, lookalike: 1_000}
    )
    updates: list[ProgressUpdate] = []
    result = sftp_source.rsync_client(progress_interval=3600).transfer(
        epn, tmp_path / "data", dry_run=False, on_progress=updates.append
    )
    assert 1 <= len(updates) <= 2
    assert updates[-1].bytes_transferred == 300_000 and updates[-1].files_transferred == 300
    assert result.tree is not None and lookalike in result.tree and len(result.tree) == 301  # and frames/


# -- the SFTP host as an adversary ------------------------------------------------


def test_listing_drops_names_that_are_not_epns(sftp_source, caplog):
    good = sftp_source.new_epn()
    for name in (good, "12282a;rm -rf x", "..weird", "notanepn", ".snapshot", "12282A"):
        (sftp_source.root / name).mkdir()
        (sftp_source.root / name).chmod(0o755)
    (sftp_source.root / "12345b").write_bytes(b"a file, not a folder")
    (sftp_source.root / "12345b").chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert sftp_source.rsync_client().list_epns() == [good]
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
    client = type(sftp_source.rsync_client())(endpoint)
    with pytest.raises(HostKeyError) as info:
        client.transfer(epn, tmp_path / "data", dry_run=False)
    assert str(pinned) in str(info.value) and "known-hosts-file" in str(info.value)
    assert not (tmp_path / "data").exists()


def test_a_key_the_sftp_host_does_not_accept_fails_naming_the_refused_login(sftp_source, epn_tree, tmp_path):
    # rsync exits 255 or 12 here, whichever of ssh's exit and the closed pipe it sees first:
    # the message tells the admin what to check either way.
    epn, _ = epn_tree
    unknown = tmp_path / "unknown_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(unknown)], check=True)
    endpoint = SshEndpoint(**{**sftp_source.endpoint.__dict__, "key_file": unknown})
    client = type(sftp_source.rsync_client())(endpoint)
    with pytest.raises(RsyncError) as info:
        client.transfer(epn, tmp_path / "data", dry_run=False)
    message = str(info.value)
    assert info.value.exit_code in (12, 255) and info.value.login_refused
    assert "the SFTP host refused the login" in message and "key-file" in message, message
    assert "Permission denied (publickey)" in message  # ssh's own words follow
    assert not (tmp_path / "data").exists()


def test_sftp_account_is_read_only(sftp_source, epn_tree, tmp_path):
    epn, folder = epn_tree
    (tmp_path / "upload.cbf").write_bytes(b"should never arrive")
    endpoint = sftp_source.endpoint
    push = [
        "rsync",
        "-r",
        "-e",
        endpoint.rsync_shell(),
        str(tmp_path / "upload.cbf"),
        endpoint.remote(f"{endpoint.source_root}/{epn}/"),
    ]
    with pytest.raises(RsyncError) as info:
        run_rsync(push)
    assert "read-only" in str(info.value)
    assert not (folder / "upload.cbf").exists()


def test_when_listed_gets_the_whole_source_tree_while_rsync_still_closes_its_connection(
    sftp_source, epn_tree, tmp_path
):
    """bring_home prepares the source's side of the verification in rsync's last ~20 ms (the
    connection closing after its --stats): what it is given must be every entry rsync reported."""
    epn, _ = epn_tree
    given: list[dict] = []
    result = sftp_source.rsync_client().transfer(
        epn, tmp_path / "data", dry_run=False, when_listed=lambda tree: given.append(dict(tree))
    )
    assert len(given) == 1 and given[0] == result.tree
    assert set(files_of(given[0])) == set(EXPECTED)
