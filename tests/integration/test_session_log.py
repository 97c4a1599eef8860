"""The local sshd's session log (session_log.py): what the SFTP host saw, each session's start
and end, which the max-tasks test counts; and the overlap counts read from it."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from assyncy_dagster.transfer import RsyncClient
from assyncy_dagster_demo.testing.session_log import Session, most_at_once, seconds_at_once
from assyncy_dagster_demo.testing.sshd import LocalSshd, make_source_tree, missing_binaries


def test_overlap_counts_touching_sessions_as_one_after_the_other():
    def session(start: float, end: float | None) -> Session:
        return Session(session=f"{start}", start=start, end=end, command="", status=0 if end else None)

    sessions = [session(0, 3), session(1, 2), session(2, 5), session(5, 6)]
    assert most_at_once(sessions) == 2
    assert seconds_at_once(sessions) == {1: 4.0, 2: 2.0}
    assert most_at_once([session(0, 1), session(1, 2)]) == 1
    assert most_at_once([session(0, None), session(5, 6)], until=4) == 1
    assert most_at_once([session(0, None), session(5, 6)]) == 2  # still running: counted as running on


@pytest.mark.skipif(bool(missing_binaries()), reason="needs openssh-server and rsync")
def test_the_host_records_each_session_start_end_and_command(tmp_path: Path):
    with LocalSshd(record_sessions=True, rate_limit_mib=2) as sshd:
        root = sshd.beamline_dir("mx")
        for epn in ("12282a", "12282b"):
            make_source_tree(root, epn, {"img_0001.cbf": 1 << 20})
        client = RsyncClient(sshd.endpoint("mx"))
        before = len(sshd.sessions())  # the start-up probe's listing
        assert client.list_epns() == ["12282a", "12282b"]

        def transfer(epn: str) -> None:
            client.transfer(epn, tmp_path / epn, dry_run=False)

        threads = [threading.Thread(target=transfer, args=(epn,)) for epn in ("12282a", "12282b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # A write is refused by rrsync -ro: that session ends too, with rsync's failure.
        refused = subprocess.run(
            ["rsync", "-e", sshd.endpoint().rsync_shell(), str(tmp_path), sshd.endpoint().remote("/data/mx/")],
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )
        assert refused.returncode != 0
        sessions = sshd.sessions()[before:]

    assert all(s.end is not None and s.end > s.start for s in sessions)
    listing, *transfers, write = sessions
    assert "--list-only" in listing.command.split() and listing.command.endswith(" /data/mx/")
    assert listing.status == 0
    assert sorted(s.command.split()[-1] for s in transfers) == ["/data/mx/12282a/", "/data/mx/12282b/"]
    assert all("--list-only" not in s.command.split() and s.status == 0 for s in transfers)
    # 1 MiB each at 2 MiB/s per session: both were sent at once.
    assert most_at_once(transfers) == 2
    assert write.status != 0 and "--sender" not in write.command.split()


def test_the_default_sshd_records_nothing(sshd: LocalSshd):
    assert not sshd.record_sessions
    assert "session_log" not in sshd.config_file.read_text()
