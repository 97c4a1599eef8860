"""statefiles: the one durable write of every state file, and the one reader of the JSON ones."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest

from assyncy_dagster import statefiles
from assyncy_dagster.statefiles import read_json, write_atomically, write_json


def _same_file(st: os.stat_result, path) -> bool:
    other = os.stat(path)
    return (st.st_dev, st.st_ino) == (other.st_dev, other.st_ino)


def test_a_write_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    # Whether data reached the disk shows only after a real power cut, which one machine cannot
    # cause: so this test watches the os.fsync and os.replace calls instead (the kill loop in
    # tests/faults/test_state_faults.py covers what a crash can show for real).
    path = tmp_path / "state.json"
    path.write_text("old")
    events: list[tuple[str, os.stat_result | None]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd)))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", None))
        real_replace(src, dst)

    monkeypatch.setattr(statefiles.os, "fsync", fsync)
    monkeypatch.setattr(statefiles.os, "replace", replace)
    write_atomically(path, "new")

    assert path.read_text() == "new"
    assert [what for what, _ in events] == ["fsync", "replace", "fsync"]
    file_synced, folder_synced = events[0][1], events[2][1]
    assert file_synced is not None and _same_file(file_synced, path), "the file's own data was fsynced"
    assert folder_synced is not None and _same_file(folder_synced, tmp_path), "then the folder holding the rename"


def test_a_failed_write_leaves_the_old_content_and_no_temporary_file(tmp_path):
    # A real failure at the rename: the target is a folder that is not empty.
    path = tmp_path / "ignore.yml"
    path.mkdir()
    (path / "keep").write_text("x")
    with pytest.raises(OSError):
        write_atomically(path, "previouslySynched: []\n")
    assert sorted(os.listdir(tmp_path)) == ["ignore.yml"]
    assert (path / "keep").read_text() == "x"


def test_text_and_bytes_are_written_as_given_and_a_missing_folder_is_created(tmp_path):
    write_atomically(tmp_path / "a" / "b.txt", "é\n")
    write_atomically(tmp_path / "c.png", b"\x89PNG\x00")
    assert (tmp_path / "a" / "b.txt").read_bytes() == "é\n".encode()
    assert (tmp_path / "c.png").read_bytes() == b"\x89PNG\x00"


def test_a_new_file_gets_the_mode_asked_and_a_replaced_file_keeps_its_own(tmp_path):
    report, state = tmp_path / "report.csv", tmp_path / "due.json"
    write_atomically(report, "a,b\n")
    write_json(state, {})
    assert stat.S_IMODE(report.stat().st_mode) == 0o644, "a report is for anyone who may read the folder"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600, "state in the instance's storage stays private"
    report.chmod(0o640)
    write_atomically(report, "a,b\n1,2\n")
    assert stat.S_IMODE(report.stat().st_mode) == 0o640


def test_a_missing_json_file_is_the_empty_value_without_a_word(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert read_json(tmp_path / "due.json", {}) == {}
    assert caplog.records == []


def test_json_written_is_json_read(tmp_path):
    write_json(tmp_path / "due.json", {"12282a": 1.5})
    assert read_json(tmp_path / "due.json", {}) == {"12282a": 1.5}


@pytest.mark.parametrize(
    "corrupt, why",
    [
        (b'{"12282a": 17000', "not JSON"),  # cut short
        (b"", "not JSON"),  # what an un-fsynced rename can leave after a power cut
        (b"\x00" * 64, "not JSON"),  # blocks allocated, never written
        (b"\xff\xfe{}", "not JSON"),  # not UTF-8
        (b'["12282a"]', "a JSON list, not a dict"),
    ],
)
def test_a_corrupt_json_file_is_moved_aside_with_a_warning_naming_both(tmp_path, caplog, corrupt, why):
    path = tmp_path / "epn_due_since.json"
    path.write_bytes(corrupt)
    with caplog.at_level(logging.WARNING, logger="assyncy.sync"):
        assert read_json(path, {}) == {}
    [aside] = [p for p in tmp_path.iterdir() if p.name.startswith("epn_due_since.json.corrupt-")]
    assert aside.read_bytes() == corrupt, "the broken bytes are kept"
    assert not path.exists()
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert str(path) in record.getMessage() and str(aside) in record.getMessage() and why in record.getMessage()

    write_json(path, {"12282b": 2.0})  # the next write starts afresh
    assert read_json(path, {}) == {"12282b": 2.0}
    assert aside.read_bytes() == corrupt


def test_two_corrupt_files_in_a_row_are_both_kept(tmp_path):
    path = tmp_path / "stuck_reported.json"
    for text in ("{", "[1"):
        path.write_text(text)
        assert read_json(path, {}) == {}
    kept = sorted(p.read_text() for p in tmp_path.iterdir() if ".corrupt-" in p.name)
    assert kept == ["[1", "{"]


def test_a_file_rewritten_after_it_was_read_is_not_moved_aside(tmp_path, monkeypatch, caplog):
    # A writer's rename landing between the read and the move cannot be timed for real:
    # the test swaps the file in at the moment the reader looks at it again.
    path = tmp_path / "epn_due_reasons.json"
    path.write_text("{broken")
    real_stat = os.stat

    def stat_after_a_writer(target, *args, **kwargs):
        if os.fspath(target) == os.fspath(path):
            monkeypatch.setattr(statefiles.os, "stat", real_stat)
            write_json(path, {"12282a": "requested"})
        return real_stat(target, *args, **kwargs)

    monkeypatch.setattr(statefiles.os, "stat", stat_after_a_writer)
    with caplog.at_level(logging.WARNING, logger="assyncy.sync"):
        assert read_json(path, {}) == {}
    assert json.loads(path.read_text()) == {"12282a": "requested"}, "the good file stays in place"
    assert not [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert "rewritten since" in caplog.text
