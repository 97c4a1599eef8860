"""What rsync's exit codes mean to an admin."""

from __future__ import annotations

from assyncy_dagster.transfer.errors import RSYNC_EXIT_MEANINGS


def test_every_documented_rsync_exit_code_has_a_meaning():
    for code in (0, 1, 2, 3, 4, 5, 6, 10, 11, 12, 13, 14, 20, 21, 22, 23, 24, 25, 30, 35, 255):
        assert RSYNC_EXIT_MEANINGS[code]
