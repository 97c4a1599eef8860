"""What rsync's exit codes mean to an admin."""

from __future__ import annotations

import pytest

from assyncy_dagster.transfer.errors import RSYNC_EXIT_MEANINGS, error_for
from assyncy_dagster.transfer.process import RsyncResult


def test_every_documented_rsync_exit_code_has_a_meaning():
    for code in (0, 1, 2, 3, 4, 5, 6, 10, 11, 12, 13, 14, 20, 21, 22, 23, 24, 25, 30, 35, 255):
        assert RSYNC_EXIT_MEANINGS[code]


def _error(code: int, stderr: list[str]):
    return error_for(
        code,
        stderr,
        description="listing",
        host_key_problem=False,
        terminated=False,
        endpoint=None,
        result=RsyncResult(code, None, "", "\n".join(stderr), 0.1),
    )


@pytest.mark.parametrize("code", [12, 255])
def test_a_refused_login_says_so_whichever_exit_code_rsync_chose(code):
    error = _error(
        code,
        [
            "assyncy-sftp@sftp.example: Permission denied (publickey).",
            "rsync: connection unexpectedly closed (0 bytes received so far) [Receiver]",
        ],
    )
    assert error.login_refused
    assert "the SFTP host refused the login" in str(error) and "key-file" in str(error)


def test_a_file_rsync_may_not_read_is_not_a_refused_login():
    error = _error(23, ['rsync: [sender] opendir "/data/12282a/raw" failed: Permission denied (13)'])
    assert not error.login_refused
    assert "refused the login" not in str(error) and "some files could not be read" in str(error)
