"""The parsing of rsync's output (transfer/parsing.py): pure, no processes."""

from __future__ import annotations

import pytest

from assyncy_dagster.transfer.manifests import Entry, Kind
from assyncy_dagster.transfer.parsing import (
    may_be_progress,
    parse_itemized_line,
    parse_listing,
    parse_progress,
    parse_stats,
)

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


def test_parse_listing_keeps_names_with_spaces_and_marks_symlinks_and_special_files():
    entries = {e.path: e for e in parse_listing(LISTING + "prw-r--r--           0 2026/11/28 00:02:39 pipe\n")}
    assert entries["frames/img 0002.cbf"].entry == Entry(Kind.FILE, 1000, 1795824159)
    assert entries["frames"].is_dir
    assert entries["link"].is_symlink
    assert entries["pipe"].entry.kind is Kind.SPECIAL
    assert "." not in entries


def test_parse_listing_reads_grouped_sizes_and_escaped_names():
    by_path = {e.path: e for e in parse_listing(LISTING)}
    assert by_path["frames/img_0001.cbf"].size == 3_000_000
    assert "weird\nname" in by_path
    assert "ütf" in by_path


def test_parse_listing_splits_a_link_by_its_target_length():
    (entry,) = parse_listing("lrwxrwxrwx          6 2026/11/28 00:02:39 latest -> 12282a\n")
    assert entry.path == "latest" and entry.entry.target == "12282a"
    # A link named `x -> ok` pointing at /etc: rsync's size (11) is the target's length.
    (tricky,) = parse_listing("lrwxrwxrwx         11 2026/11/28 00:02:39 x -> ok -> /etc/passwd\n")
    assert (tricky.path, tricky.entry.target) == ("x -> ok", "/etc/passwd")


def test_parse_itemized_lines_carry_mtime_checksum_and_what_was_sent():
    sent = parse_itemized_line(">f+++++++++|6|2026/12/05-20:56:51|6bba86c7e069f56d5a10b435f1c8e49c|a")
    assert sent is not None and sent.sent and sent.new
    assert sent.entry == Entry(Kind.FILE, 6, 1796504211, checksum="6bba86c7e069f56d5a10b435f1c8e49c")
    kept = parse_itemized_line(".f         |100000|2026/12/05-20:56:51|                                |sub/b")
    assert kept is not None and not kept.sent and kept.entry.checksum is None
    rewritten = parse_itemized_line(">f..t......|6|2020/01/01-00:00:00|d06015dfa1a0e8057d187c6c5c0c0ee1|a")
    assert rewritten is not None and rewritten.sent and not rewritten.new and rewritten.entry.mtime == 1577836800
    folder = parse_itemized_line("cd+++++++++|4096|2026/12/05-20:56:51|                                |empty/")
    assert folder is not None and folder.path == "empty" and folder.entry.kind is Kind.DIR
    assert parse_itemized_line(".d         |4096|2026/12/05-20:56:51|                                |./") is None


def test_parse_itemized_link_whose_name_holds_an_arrow():
    blank = " " * 32  # no checksum: links have none
    item = parse_itemized_line(f"cL+++++++++|11|2026/12/05-20:56:51|{blank}|x -> ok -> /etc/passwd")
    assert item is not None and (item.path, item.entry.target) == ("x -> ok", "/etc/passwd")


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


@pytest.mark.parametrize(
    ("record", "maybe"),
    [
        ("         301004  99%  287.06MB/s    0:00:00 (xfr#6, to-chk=2/10)", True),
        ("1,234,567,890,123 100%  1.00GB/s    0:10:00", True),  # wider than rsync's 15 columns
        (">f+++++++++|512|2026/12/06-07:52:38|" + "a" * 32 + "|100% done.cbf", False),
        (".d..t......|4096|2026/12/06-07:52:38|" + " " * 32 + "|50%/", False),
        ("Total file size: 100% bytes", False),
        ("", False),
    ],
)
def test_only_a_record_shaped_like_progress_is_taken_for_one(record, maybe):
    # rsync prints a progress record after every file: only these are parsed as progress, and an
    # itemized line whose name holds a `%` never is.
    assert may_be_progress(record) is maybe
