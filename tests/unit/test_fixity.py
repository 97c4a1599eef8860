"""The fixity audit re-hashes a recorded EPN against the manifest bag.make_manifest made, and the
findings store keeps what it found for the report and the repair."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import xxhash

from assyncy_dagster.fixity import (
    REFETCH_MTIME,
    FixityError,
    audit_epn,
    clear_findings,
    findings_for,
    findings_path,
    mark_for_refetch,
    read_findings,
    record_findings,
)
from assyncy_dagster.transfer.bag import Recorded, read_manifest
from assyncy_dagster.transfer.manifests import Entry, Kind
from tests.support.helpers import write_manifest

MTIME = 1_700_000_000
FILES = {
    "frames/img_0001.cbf": os.urandom(300 * 1024),
    "frames/img_0002.cbf": os.urandom(200 * 1024),
    "processing/xds.log": b"XDS run finished\n",
    ".info": b"beamline: MX2\n",
}


def _checksum(algorithm: str, data: bytes) -> str:
    return xxhash.xxh3_128(data).hexdigest() if algorithm == "xxh128" else hashlib.md5(data).hexdigest()


def _epn(tmp_path: Path, algorithm: str = "xxh128", unchecked: tuple[str, ...] = ()) -> Path:
    """An EPN folder at home as a transfer leaves it: data/ with the files, their facility mtimes,
    a symlink, and the manifest beside data/ (written by the transfer's own writer)."""
    epn_folder = tmp_path / "ny79" / "12282a"
    tree: dict[str, Entry] = {}
    for relative, data in FILES.items():
        path = epn_folder / "data" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (MTIME, MTIME))
        checksum = None if relative in unchecked else _checksum(algorithm, data)
        tree[relative] = Entry(Kind.FILE, len(data), MTIME, checksum=checksum)
    (epn_folder / "data" / "latest.cbf").symlink_to("frames/img_0002.cbf")
    tree["latest.cbf"] = Entry(Kind.LINK, mtime=MTIME, target="frames/img_0002.cbf")
    write_manifest(epn_folder, tree, algorithm=algorithm, info={"External-Identifier": "12282a"})
    return epn_folder


def _recorded(epn_folder: Path) -> Recorded:
    recorded = read_manifest(epn_folder)
    assert recorded is not None
    return recorded


@pytest.mark.parametrize("algorithm", ["xxh128", "md5"])
def test_an_untouched_epn_is_intact_and_every_file_is_read(tmp_path, algorithm):
    epn_folder = _epn(tmp_path, algorithm)
    audit = audit_epn(epn_folder, _recorded(epn_folder), max_mib_per_second=None)
    assert audit.ok, audit.summary()
    assert (audit.verified, audit.unchecked) == (4, 0)
    assert audit.bytes_read == sum(len(d) for d in FILES.values())
    assert audit.summary().startswith("intact: 4 file(s) verified by content")


@pytest.mark.parametrize("algorithm", ["xxh128", "md5"])
def test_a_bit_flipped_at_the_same_size_and_mtime_is_corrupt(tmp_path, algorithm):
    epn_folder = _epn(tmp_path, algorithm)
    frame = epn_folder / "data" / "frames" / "img_0002.cbf"
    data = bytearray(frame.read_bytes())
    data[1000] ^= 0x01
    frame.write_bytes(bytes(data))
    os.utime(frame, (MTIME, MTIME))  # as rot on disk would leave it: size and mtime as recorded
    audit = audit_epn(epn_folder, _recorded(epn_folder), max_mib_per_second=None)
    assert audit.corrupt == ["frames/img_0002.cbf"]
    assert not audit.missing and not audit.changed and not audit.ok
    assert audit.verified == 3
    assert "1 corrupt at home" in audit.summary() and "corrupt: frames/img_0002.cbf" in audit.summary()


def test_a_deleted_file_is_missing(tmp_path):
    epn_folder = _epn(tmp_path)
    (epn_folder / "data" / "processing" / "xds.log").unlink()
    audit = audit_epn(epn_folder, _recorded(epn_folder), max_mib_per_second=None)
    assert audit.missing == ["processing/xds.log"]
    assert not audit.corrupt and not audit.changed


def test_a_file_appended_to_at_home_is_changed_and_not_read(tmp_path):
    epn_folder = _epn(tmp_path)
    log = epn_folder / "data" / "processing" / "xds.log"
    with log.open("ab") as handle:
        handle.write(b"a note a user added\n")
    audit = audit_epn(epn_folder, _recorded(epn_folder), max_mib_per_second=None)
    assert audit.changed == ["processing/xds.log"]
    assert not audit.corrupt and not audit.missing
    assert audit.bytes_read == sum(len(d) for p, d in FILES.items() if p != "processing/xds.log")


def test_a_file_touched_at_home_is_changed(tmp_path):
    epn_folder = _epn(tmp_path)
    os.utime(epn_folder / "data" / ".info", (MTIME + 60, MTIME + 60))
    assert audit_epn(epn_folder, _recorded(epn_folder), max_mib_per_second=None).changed == [".info"]


def test_a_symlink_pointing_elsewhere_or_gone_is_found(tmp_path):
    epn_folder = _epn(tmp_path)
    link = epn_folder / "data" / "latest.cbf"
    link.unlink()
    link.symlink_to("frames/img_0001.cbf")
    assert audit_epn(epn_folder, _recorded(epn_folder), max_mib_per_second=None).changed == ["latest.cbf"]
    link.unlink()
    assert audit_epn(epn_folder, _recorded(epn_folder), max_mib_per_second=None).missing == ["latest.cbf"]


def _failing_open(monkeypatch, name: str, error: OSError) -> None:
    real_open = os.open

    def failing_open(path, *args, **kwargs):
        if str(path).endswith(name):
            raise error
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", failing_open)


def test_a_file_made_unreadable_at_home_is_changed(tmp_path, monkeypatch):
    epn_folder = _epn(tmp_path)
    _failing_open(monkeypatch, "img_0001.cbf", PermissionError(13, "Permission denied"))  # root reads any mode
    assert audit_epn(epn_folder, _recorded(epn_folder), max_mib_per_second=None).changed == ["frames/img_0001.cbf"]


def test_a_read_error_is_corrupt(tmp_path, monkeypatch):
    epn_folder = _epn(tmp_path)
    _failing_open(monkeypatch, "img_0002.cbf", OSError(5, "Input/output error"))  # what a bad sector gives
    audit = audit_epn(epn_folder, _recorded(epn_folder), max_mib_per_second=None)
    assert audit.corrupt == ["frames/img_0002.cbf"] and audit.verified == 3


def test_files_recorded_without_a_checksum_are_counted_unchecked_not_read(tmp_path):
    epn_folder = _epn(tmp_path, unchecked=("frames/img_0001.cbf",))
    frame = epn_folder / "data" / "frames" / "img_0001.cbf"
    frame.write_bytes(os.urandom(300 * 1024))  # cannot be seen without a checksum ...
    os.utime(frame, (MTIME, MTIME))
    audit = audit_epn(epn_folder, _recorded(epn_folder), max_mib_per_second=None)
    assert audit.ok and (audit.verified, audit.unchecked) == (3, 1)
    assert "1 by size only" in audit.summary()


def test_a_manifest_path_leading_out_of_data_is_never_read(tmp_path):
    epn_folder = _epn(tmp_path)
    (tmp_path / "secret").write_bytes(b"x")
    recorded = _recorded(epn_folder)
    tree = {**recorded.tree, "../../../secret": Entry(Kind.FILE, 1, MTIME, checksum="0" * 32)}
    audit = audit_epn(epn_folder, Recorded(recorded.algorithm, tree, recorded.digest), max_mib_per_second=None)
    assert audit.changed == ["../../../secret"]
    assert audit.bytes_read == sum(len(d) for d in FILES.values())


def test_an_algorithm_the_tool_cannot_compute_is_refused(tmp_path):
    epn_folder = _epn(tmp_path)
    recorded = _recorded(epn_folder)
    with pytest.raises(FixityError, match="sha1"):
        audit_epn(epn_folder, Recorded("sha1", recorded.tree, recorded.digest), max_mib_per_second=None)


def test_the_rate_bound_paces_the_reads(tmp_path):
    epn_folder = _epn(tmp_path)
    audit = audit_epn(epn_folder, _recorded(epn_folder), max_mib_per_second=2)
    # 0.49 MiB at 2 MiB/s: a quarter of a second, where unbounded it takes a millisecond.
    assert audit.ok and audit.bytes_read == sum(len(d) for d in FILES.values())
    assert audit.seconds >= audit.bytes_read / (2 * 1024 * 1024) * 0.95
    assert audit.mib_per_second <= 2.1


def test_findings_are_kept_per_epn_and_an_intact_audit_drops_them(tmp_path):
    store = findings_path(tmp_path)
    epn_folder = _epn(tmp_path)
    (epn_folder / "data" / ".info").unlink()
    bad = audit_epn(epn_folder, _recorded(epn_folder), max_mib_per_second=None)
    record_findings(store, "12282a", bad, audited_at=1000.0)
    record_findings(store, "13001a", bad, audited_at=2000.0)
    assert findings_for(store, "12282a") == [".info"]
    assert read_findings(store)["13001a"].missing == (".info",)
    assert read_findings(store)["13001a"].audited_at == 2000.0
    (epn_folder / "data" / ".info").write_bytes(FILES[".info"])
    os.utime(epn_folder / "data" / ".info", (MTIME, MTIME))
    record_findings(store, "12282a", audit_epn(epn_folder, _recorded(epn_folder), max_mib_per_second=None))
    assert findings_for(store, "12282a") == []
    clear_findings(store, "13001a")
    assert read_findings(store) == {}
    assert findings_for(tmp_path / "nowhere.json", "12282a") == []


def test_mark_for_refetch_makes_rsyncs_quick_check_differ(tmp_path):
    epn_folder = _epn(tmp_path)
    data = epn_folder / "data"
    marked = mark_for_refetch(data, ["frames/img_0002.cbf", "gone.cbf", "latest.cbf", "../../outside"])
    assert marked == ["frames/img_0002.cbf"]
    assert (data / "frames" / "img_0002.cbf").stat().st_mtime == REFETCH_MTIME
    assert (data / "frames" / "img_0001.cbf").stat().st_mtime == MTIME  # only the listed file
    assert (data / "latest.cbf").lstat().st_mtime != REFETCH_MTIME  # a link is left to rsync's own check
