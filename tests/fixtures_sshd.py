"""A real OpenSSH server serving a read-only source tree through rrsync, and a clean EPN area per test."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from assyncy_dagster.testing.sshd import LocalSshd, missing_binaries
from assyncy_dagster.transfer import RsyncClient, SshEndpoint

__all__ = ["sshd", "sftp_source", "SftpSource"]

_epn_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def sshd() -> Iterator[LocalSshd]:
    """One sshd for the whole session; its served tree is `sshd.beamline_dir("mx")` for `/data/mx`."""
    missing = missing_binaries()
    if missing:
        pytest.skip(f"sshd tests need {', '.join(missing)} (apt-get install openssh-server openssh-client rsync)")
    # Its own folder under /tmp: pytest's tmp_path is private to root, and the SFTP account must read the tree.
    server = LocalSshd()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class SftpSource:
    """One test's view of the SFTP host: a fresh beamline folder and unique EPN names."""

    sshd: LocalSshd
    root: Path  # on disk: what /data/<beamline> means on the server
    endpoint: SshEndpoint
    prefix: int

    def new_epn(self, letter: str = "a") -> str:
        """An EPN name no other test uses (so a leftover process of another test never matches it)."""
        return f"{self.prefix}{next(_epn_numbers):04d}{letter}"

    def client(self, **kwargs: object) -> RsyncClient:
        return RsyncClient(self.endpoint, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def sftp_source(sshd: LocalSshd, request: pytest.FixtureRequest) -> Iterator[SftpSource]:
    """A clean beamline folder on the session's sshd, and an endpoint pointing at it."""
    beamline = f"bl{next(_epn_numbers)}"
    root = sshd.beamline_dir(beamline)
    endpoint = sshd.endpoint(beamline)
    try:
        yield SftpSource(sshd=sshd, root=root, endpoint=endpoint, prefix=70000 + os.getpid() % 1000)
    finally:
        shutil.rmtree(root, ignore_errors=True)
