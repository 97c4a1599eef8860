"""Reading rsync's output: `--list-only` listings, the `--stats` block, progress2 records, itemized lines.

Pure functions of text, so they test in microseconds. Names arrive as rsync
prints them under `LC_ALL=C`: every unprintable or non-ASCII byte escaped as
`\\#ooo`, which `unescape_name` undoes.
"""

from __future__ import annotations

import calendar
import functools
import re
from dataclasses import dataclass
from typing import NamedTuple

from .manifests import Entry, Kind


@dataclass(frozen=True)
class ListingEntry:
    """One line of `rsync --list-only`: a path relative to the listed folder, and what it is."""

    path: str
    entry: Entry

    @property
    def size(self) -> int:
        return self.entry.size

    @property
    def is_dir(self) -> bool:
        return self.entry.kind is Kind.DIR

    @property
    def is_symlink(self) -> bool:
        return self.entry.kind is Kind.LINK

    @property
    def is_file(self) -> bool:
        return self.entry.kind is Kind.FILE


_LISTING_LINE = re.compile(
    r"^(?P<mode>[dlcbps-][rwxsStT-]{9})[.+@]?\s+(?P<size>[\d,.]+)\s+"
    r"(?P<mtime>\d{4}/\d{2}/\d{2}\s+\d{2}:\d{2}:\d{2})\s(?P<name>.+)$"
)
_ESCAPE = re.compile(r"\\#([0-7]{3})")
LINK_ARROW = " -> "
_DIGITS = re.compile(r"\d+")


def unescape_name(name: str) -> str:
    """Undo rsync's `\\#ooo` escaping of unprintable bytes (a newline in a name is `\\#012`)."""
    if "\\#" not in name:
        return name
    raw = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(name):
        raw += name[pos : match.start()].encode("utf-8", "surrogateescape")
        raw.append(int(match.group(1), 8) & 0xFF)
        pos = match.end()
    raw += name[pos:].encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "surrogateescape")


def _number(text: str) -> int:
    return int(text.replace(",", "").split(".")[0] or 0)


@functools.lru_cache(maxsize=4096)  # the files of one EPN share few distinct seconds
def _epoch(text: str) -> int:
    """rsync's `YYYY/MM/DD HH:MM:SS` (or with `-` between date and time) as seconds since the
    epoch: rsync runs under TZ=UTC (process.py), so listings and itemized lines agree."""
    year, month, day, hour, minute, second = (int(part) for part in _DIGITS.findall(text))
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))


def split_link(text: str, target_length: int) -> tuple[str, str]:
    """`name -> target` as (name, target), both unescaped. rsync gives a symlink's size as
    the length of its target, so the split is exact even when a name holds ` -> ` itself."""
    raw = unescape_name(text).encode("utf-8", "surrogateescape")
    cut = len(raw) - target_length - len(LINK_ARROW)
    if target_length <= 0 or cut < 1 or raw[cut : cut + len(LINK_ARROW)] != LINK_ARROW.encode():
        name, _, target = unescape_name(text).partition(LINK_ARROW)  # not rsync's own line: best effort
        return name, target
    return (
        raw[:cut].decode("utf-8", "surrogateescape"),
        raw[cut + len(LINK_ARROW) :].decode("utf-8", "surrogateescape"),
    )


_KINDS = {"-": Kind.FILE, "d": Kind.DIR, "l": Kind.LINK}


def parse_listing_line(line: str) -> ListingEntry | None:
    """One listing line as an entry (devices, fifos and sockets as special entries);
    None for the `.` entry and non-listing lines."""
    match = _LISTING_LINE.match(line.rstrip("\r\n"))
    if match is None:
        return None
    kind = _KINDS.get(match.group("mode")[0], Kind.SPECIAL)
    size = _number(match.group("size"))
    target = None
    if kind is Kind.LINK:
        name, target = split_link(match.group("name"), size)
    else:
        name = unescape_name(match.group("name"))
    if name in (".", "./"):
        return None
    entry = Entry(kind, size if kind is Kind.FILE else 0, _epoch(match.group("mtime")), target=target)
    return ListingEntry(path=name.rstrip("/"), entry=entry)


def parse_listing(text: str) -> list[ListingEntry]:
    """Entries of an `rsync --list-only` listing (names with spaces kept whole; symlinks marked)."""
    entries = []
    for line in text.splitlines():
        entry = parse_listing_line(line)
        if entry is not None:
            entries.append(entry)
    return entries


@dataclass(frozen=True)
class TransferStats:
    """The totals of rsync's `--stats` block (zeros where the block did not say)."""

    files_transferred: int = 0
    bytes_transferred: int = 0
    total_files: int = 0
    total_regular_files: int = 0
    total_dirs: int = 0
    created_files: int = 0
    deleted_files: int = 0
    total_size: int = 0
    literal_data: int = 0
    matched_data: int = 0
    file_list_size: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0


_NUM = r"([\d,]+(?:\.\d+)?)"
_STATS_FIELDS: dict[str, re.Pattern[str]] = {
    "total_files": re.compile(rf"^Number of files:\s+{_NUM}", re.MULTILINE),
    "created_files": re.compile(rf"^Number of created files:\s+{_NUM}", re.MULTILINE),
    "deleted_files": re.compile(rf"^Number of deleted files:\s+{_NUM}", re.MULTILINE),
    "files_transferred": re.compile(rf"^Number of regular files transferred:\s+{_NUM}", re.MULTILINE),
    "total_size": re.compile(rf"^Total file size:\s+{_NUM}", re.MULTILINE),
    "bytes_transferred": re.compile(rf"^Total transferred file size:\s+{_NUM}", re.MULTILINE),
    "literal_data": re.compile(rf"^Literal data:\s+{_NUM}", re.MULTILINE),
    "matched_data": re.compile(rf"^Matched data:\s+{_NUM}", re.MULTILINE),
    "file_list_size": re.compile(rf"^File list size:\s+{_NUM}", re.MULTILINE),
    "bytes_sent": re.compile(rf"^Total bytes sent:\s+{_NUM}", re.MULTILINE),
    "bytes_received": re.compile(rf"^Total bytes received:\s+{_NUM}", re.MULTILINE),
}
_FILE_KINDS = re.compile(r"^Number of files:.*?\((?P<kinds>[^)]*)\)", re.MULTILINE)


def has_stats(text: str) -> bool:
    return _STATS_FIELDS["total_files"].search(text) is not None


def begins_stats(line: str) -> bool:
    """Whether this stdout line is the first of rsync's `--stats` block, which rsync prints once it
    has reported every entry (itemized), while it closes the connection (about 20 ms)."""
    return _STATS_FIELDS["total_files"].match(line) is not None


def parse_stats(text: str) -> TransferStats:
    """Parse rsync's `--stats` block; numbers with or without digit grouping (`--no-h`)."""
    values: dict[str, int] = {}
    for name, pattern in _STATS_FIELDS.items():
        match = pattern.search(text)
        if match:
            values[name] = _number(match.group(1))
    kinds = _FILE_KINDS.search(text)
    if kinds:
        for key, number in re.findall(r"(\w+):\s*([\d,]+)", kinds.group("kinds")):
            if key == "reg":
                values["total_regular_files"] = _number(number)
            elif key == "dir":
                values["total_dirs"] = _number(number)
    return TransferStats(**values)


class ProgressUpdate(NamedTuple):
    """One `--info=progress2` record: overall progress of a running transfer.

    A named tuple: rsync prints one record per file it sends, 100,000 for an EPN of 100,000
    small files, each parsed while rsync runs."""

    bytes_transferred: int
    percent: int
    rate_bytes_per_second: float
    time_text: str  # rsync's ETA while running, elapsed time on the last record
    files_transferred: int | None = None
    files_to_check: int | None = None
    files_total: int | None = None
    listing_complete: bool = True  # False while rsync still scans folders (ir-chk)

    @property
    def files_checked(self) -> int | None:
        if self.files_total is None or self.files_to_check is None:
            return None
        return self.files_total - self.files_to_check

    def __str__(self) -> str:
        """One log line: `42% 1.3 GiB at 151.2 MiB/s, 120 files transferred, 300/900 checked, 0:00:09`."""
        text = f"{self.percent}% {_human(self.bytes_transferred)} at {_human(self.rate_bytes_per_second)}/s"
        if self.files_transferred is not None:
            text += f", {self.files_transferred} files transferred"
        if self.files_checked is not None:
            scanning = "" if self.listing_complete else " (still listing)"
            text += f", {self.files_checked}/{self.files_total} checked{scanning}"
        return f"{text}, {self.time_text}"


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


_PROGRESS = re.compile(
    r"^\s*(?P<bytes>[\d,]+)\s+(?P<pct>\d+)%\s+(?P<rate>[\d.,]+)(?P<unit>[kMGTP]?B)/s\s+(?P<time>\d+:\d{2}:\d{2})"
    r"(?:\s+\(xfr#(?P<xfr>\d+),\s*(?P<chk>ir|to)-chk=(?P<todo>\d+)/(?P<total>\d+)\))?"
)
_RATE_UNITS = {"B": 1, "kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40, "PB": 1 << 50}


def may_be_progress(record: str) -> bool:
    """Whether a stdout record may be a progress2 record (`parse_progress` says for sure): one
    starts with a blank or a digit and holds `%`; an itemized line (`commands.ITEMIZE`) starts
    with `%i`'s change character, never so. Cheap: rsync prints one after every file."""
    first = record[:1]
    return (first == " " or first.isdigit()) and "%" in record


def parse_progress(record: str) -> ProgressUpdate | None:
    """Parse one progress2 record (the text between `\\r`s), or None if it is not one."""
    match = _PROGRESS.match(record)
    if match is None:
        return None
    size, pct, rate, unit, elapsed, xfr, chk, todo, total = match.groups()
    rate_value = float(rate if rate.isdigit() else rate.replace(",", "")) * _RATE_UNITS[unit]
    if xfr is None:
        return ProgressUpdate(_count(size), int(pct), rate_value, elapsed)
    return ProgressUpdate(_count(size), int(pct), rate_value, elapsed, int(xfr), int(todo), int(total), chk != "ir")


def _count(text: str) -> int:
    return int(text) if text.isdigit() else _number(text)


# One line per entry of `-ii --out-format=%i|%l|%M|%C|%n%L` (`commands.ITEMIZE`).
# `%i` is 11 characters (e.g. `>f+++++++++`, `.f         `, `cL+++++++++`): the second is the kind.
# `%C` is the whole-file checksum the sender computed while sending (blank for a file not sent).
# A line is split once on `|` and each field checked (rsync prints one per entry: 100,000 for
# an EPN of 100,000 files, parsed while rsync runs); the name is last, so it may hold `|`.
_ITEM_CHANGES = frozenset("<>ch.*")
_ITEM_KINDS = {"f": Kind.FILE, "d": Kind.DIR, "L": Kind.LINK, "D": Kind.SPECIAL, "S": Kind.SPECIAL}
_MTIME = re.compile(r"[\d/:-]+")
_CHECKSUM = re.compile(r"[0-9a-f]+")
# What rsync prints (on stdout or stderr) for a source device or fifo it does not copy.
SKIPPED_NON_REGULAR = re.compile(r'^skipping non-regular file "(.+)"$')


class ItemizedEntry(NamedTuple):
    """One entry a transfer covered: its path, what it is at the source, and whether this run sent it."""

    path: str
    entry: Entry
    sent: bool = False  # the file's data came over in this run (new, or changed at the source)
    new: bool = False  # it was not at the destination before


@functools.lru_cache(maxsize=4096)
def _item_mtime(text: str) -> int | None:
    """`%M` as seconds since the epoch, or None when the field is not rsync's date."""
    if _MTIME.fullmatch(text) is None or len(_DIGITS.findall(text)) != 6:
        return None
    return _epoch(text)


def parse_itemized_line(line: str) -> ItemizedEntry | None:
    """The entry of one itemized line; None for the top folder and any other output."""
    fields = line.split("|", 4)
    if len(fields) != 5:
        return None
    flags, size_text, mtime_text, checksum, name = fields
    if len(flags) != 11 or flags[0] not in _ITEM_CHANGES or not name or "\n" in name or "\r" in name:
        return None
    kind = _ITEM_KINDS.get(flags[1])
    if kind is None or not (size_text.isascii() and size_text.isdigit()):
        return None
    mtime = _item_mtime(mtime_text)
    if mtime is None:
        return None
    checksum = checksum.strip()
    if checksum and _CHECKSUM.fullmatch(checksum) is None:
        return None
    new = flags[2:] == "+++++++++"
    if kind is Kind.FILE:
        path = unescape_name(name) if "\\#" in name else name
        return ItemizedEntry(path, Entry(kind, int(size_text), mtime, checksum or None), flags[0] == ">", new)
    target = None
    if kind is Kind.LINK:
        name, target = split_link(name, int(size_text))
    elif "\\#" in name:
        name = unescape_name(name)
    path = name.rstrip("/")
    if path in (".", ""):
        return None
    return ItemizedEntry(path, Entry(kind, 0, mtime, None, target), False, new)
