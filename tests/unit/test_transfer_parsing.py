"""The parsing of rsync's output (transfer/parsing.py): pure, no processes."""

from __future__ import annotations

import pytest

from assyncy_dagster.transfer.parsing import ListingEntry, parse_listing, parse_progress, parse_stats

LISTING = (
    "drwxr-xr-x        4096 2026/11/28 00:02:39 .\n"
    "-rw-r--r--           1 2026/11/28 00:02:39 .info\n"
    "lrwxrwxrwx           6 2026/11/28 00:02:39 link\n"
    "-rw-r--r--           1 2026/11/28 00:02:39 weird\\#012name\n"
    "-rw-r--r--           1 2026/11/28 00:02:39 \\#303\\#274tf\n"
    "drwxr-xr-x        4096 2026/11/28 00:02:39 frames\n"
    "-rw-r--r--        1000 2026/11/28 00:02:39 frames/img 0002.cbf\n"
    "-rw-r--r--   3,000,000 2026/11/28 00:02:39 frames/img_0001.cbf\n"
    'skipping non-regular file "link"\n'
)


def test_parse_listing_keeps_names_with_spaces_and_marks_symlinks():
    entries = parse_listing(LISTING)
    assert ListingEntry("frames/img 0002.cbf", 1000, False) in entries
    assert ListingEntry("frames", 4096, True) in entries
    assert ListingEntry("link", 6, False, is_symlink=True) in entries
    assert not any(e.path == "." for e in entries)


def test_parse_listing_reads_grouped_sizes_and_escaped_names():
    by_path = {e.path: e for e in parse_listing(LISTING)}
    assert by_path["frames/img_0001.cbf"].size == 3_000_000
    assert "weird\nname" in by_path
    assert "ütf" in by_path


def test_parse_listing_drops_symlink_target():
    (entry,) = parse_listing("lrwxrwxrwx          6 2026/11/28 00:02:39 latest -> 12282a\n")
    assert entry.path == "latest" and entry.is_symlink


STATS = """
Number of files: 10 (reg: 6, dir: 3, link: 1)
Number of created files: 8 (reg: 6, dir: 2)
Number of deleted files: 0
Number of regular files transferred: 6
Total file size: 301010 bytes
Total transferred file size: 301004 bytes
Literal data: 301004 bytes
Matched data: 0 bytes
File list size: 212
File list generation time: 0.001 seconds
File list transfer time: 0.000 seconds
Total bytes sent: 198
Total bytes received: 301572

sent 198 bytes  received 301572 bytes  603540.00 bytes/sec
total size is 301010  speedup is 1.00
"""


def test_parse_stats_reads_the_totals():
    stats = parse_stats(STATS)
    assert stats.files_transferred == 6
    assert stats.bytes_transferred == 301004
    assert stats.total_files == 10
    assert stats.total_regular_files == 6
    assert stats.total_dirs == 3
    assert stats.total_size == 301010
    assert stats.literal_data == 301004
    assert stats.matched_data == 0
    assert stats.bytes_received == 301572


def test_parse_stats_handles_digit_grouping():
    stats = parse_stats(
        "Number of files: 12,345 (reg: 12,000, dir: 345)\n"
        "Number of regular files transferred: 1,234\nTotal file size: 1,234,567,890 bytes\n"
    )
    assert (stats.total_files, stats.total_regular_files, stats.files_transferred, stats.total_size) == (
        12345,
        12000,
        1234,
        1234567890,
    )


def test_parse_progress_reads_bytes_rate_and_file_counts():
    update = parse_progress("         301004  99%  287.06MB/s    0:00:00 (xfr#6, to-chk=2/10)")
    assert update is not None
    assert update.bytes_transferred == 301004
    assert update.percent == 99
    assert update.rate_bytes_per_second == pytest.approx(287.06 * 1024 * 1024)
    assert (update.files_transferred, update.files_to_check, update.files_total) == (6, 2, 10)
    assert update.files_checked == 8 and update.listing_complete


def test_parse_progress_without_file_counts_and_during_scan():
    first = parse_progress("              0   0%    0.00kB/s    0:00:00  ")
    assert first is not None and first.files_total is None
    scanning = parse_progress("  1,024   1%   1.00kB/s    0:01:00 (xfr#1, ir-chk=100/200)")
    assert scanning is not None and not scanning.listing_complete and scanning.bytes_transferred == 1024


def test_parse_progress_ignores_other_lines():
    assert parse_progress("Total file size: 100% bytes") is None
    assert parse_progress("-rw-r--r-- 1 2026/11/28 00:02:39 50% off.cbf") is None
