"""What a failed rsync raises (transfer/errors.py): exit codes and messages, from a real child process but no rsync."""

from __future__ import annotations

from pathlib import Path

import pytest

from assyncy_dagster.transfer.errors import HostKeyError, RsyncError
from assyncy_dagster.transfer.process import run_rsync
from tests.support.helpers import facility_endpoint


def _fake_rsync(tmp_path: Path, stderr: str, code: int) -> list[str]:
    # A stand-in for rsync's exit behaviour: exit codes and stderr cannot be forced from real rsync cheaply.
    script = tmp_path / "fake.sh"
    script.write_text(f"#!/bin/sh\nprintf '%s' '{stderr}' >&2\nexit {code}\n")
    script.chmod(0o755)
    return [str(script)]


def test_partial_transfer_error_names_code_meaning_and_stderr(tmp_path):
    argv = _fake_rsync(tmp_path, 'rsync: [sender] send_files failed to open "x": Permission denied (13)\n', 23)
    with pytest.raises(RsyncError) as info:
        run_rsync(argv, description="transfer of EPN 12282a")
    message = str(info.value)
    assert info.value.exit_code == 23
    assert "transfer of EPN 12282a" in message and "partial transfer" in message and "Permission denied" in message


def test_host_key_mismatch_is_a_host_key_error_pointing_at_known_hosts(tmp_path):
    argv = _fake_rsync(
        tmp_path,
        "@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\nHost key verification failed.\n",
        255,
    )
    with pytest.raises(HostKeyError) as info:
        run_rsync(argv, endpoint=facility_endpoint())
    assert "known-hosts-file /etc/assyncy/known_hosts" in str(info.value)
