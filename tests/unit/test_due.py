"""due.py: the stuck canary's clocks survive what can happen to their file."""

import logging
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

from assyncy_dagster.due import due_file, read_due_since, update_due_since
from tests.support.helpers import NOW


def storage(tmp_path: Path):
    """Just enough of an instance for the due file."""
    return SimpleNamespace(storage_directory=lambda: str(tmp_path))


def test_a_corrupt_due_file_restarts_the_clocks_loudly_and_keeps_its_bytes(tmp_path, caplog):
    instance = storage(tmp_path)
    update_due_since(instance, ["12282a"], NOW - timedelta(days=3))
    due_file(instance).write_text('{"12282a": 17')  # cut short

    later = NOW + timedelta(hours=1)
    with caplog.at_level(logging.WARNING, logger="assyncy.sync"):
        assert update_due_since(instance, ["12282a"], later) == {"12282a": later.timestamp()}
    [aside] = tmp_path.glob("epn_due_since.json.corrupt-*")
    assert aside.read_text() == '{"12282a": 17'
    assert str(due_file(instance)) in caplog.text and str(aside) in caplog.text
    assert read_due_since(instance) == {"12282a": later.timestamp()}, "the next write started afresh"
