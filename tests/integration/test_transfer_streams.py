"""Parallel streams against the real sshd: the same result as one rsync, and one rsync below the threshold."""

import os
import shutil

import pytest

from assyncy_dagster.resources.ssh_source import SshSourceResource
from assyncy_dagster.transfer import RsyncError
from assyncy_dagster_demo.testing.sshd import make_source_tree
from tests.support.helpers import epn_data_metadata, failure_text, frames_in_folders, tree_differences


def test_four_streams_bring_home_exactly_what_one_rsync_does(stack):
    stack.configure(**{"transfer-streams": 4, "transfer-streams-min-mib": 0})
    make_source_tree(stack.source, "12282a", frames_in_folders())
    result = stack.materialize("12282a")
    assert result.success, failure_text(result)
    meta = epn_data_metadata(result)
    assert meta["streams"] == 4
    assert meta["files_transferred"] == 66 == meta["files_at_destination"]  # 64 frames, the log, .info
    dest = stack.destination("ny79", "12282a")
    assert tree_differences(stack.source / "12282a", dest) == []
    assert not (dest / ".DS_Store").exists()
    assert stack.ignored() == ["12282a"]


def test_an_epn_below_the_threshold_uses_one_rsync(stack):
    stack.configure(**{"transfer-streams": 4, "transfer-streams-min-mib": 1024})
    stack.lay_out("12282a")
    result = stack.materialize("12282a")
    assert result.success and epn_data_metadata(result)["streams"] == 1


# Notes, for each local rsync started, whether its destination (the last argument) and the folder
# above it are there, then runs the real rsync.
NOTING_RSYNC = """#!/bin/sh
for last; do :; done
case "$last" in /*)
  if [ -d "$last" ]; then here=made; else here=missing; fi
  if [ -d "$(dirname "$last")" ]; then above=made; else above=missing; fi
  printf '%s %s %s\\n' "$here" "$above" "$last" >> "{log}";;
esac
exec {rsync} "$@"
"""


def test_no_rsync_of_a_transfer_is_left_a_folder_another_may_be_making(stack, tmp_path, monkeypatch):
    """rsync's --mkpath looks for each missing folder, then makes it: of two rsyncs making one
    folder at once, the slower failed ("mkdir ... failed: File exists", seen once in CI on a
    four-stream first copy). That moment cannot be brought about on demand, so each rsync is
    watched starting instead, through a stand-in on PATH that notes what it finds and runs the
    real rsync: every stream finds its destination made; a single rsync into a new project finds
    the folders above its destination made, and not the destination (a first copy)."""
    shim = tmp_path / "bin"
    shim.mkdir()
    log = tmp_path / "started.log"
    (shim / "rsync").write_text(NOTING_RSYNC.format(log=log, rsync=shutil.which("rsync")))
    (shim / "rsync").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")
    make_source_tree(stack.source, "12282a", frames_in_folders(folders=4, per_folder=4))
    stack.lay_out("12282b")
    client = SshSourceResource().client()
    streamed = stack.root / "new-project" / "12282a" / "data"
    single = stack.root / "another-project" / "12282b" / "data"

    assert client.transfer("12282a", streamed, dry_run=False, streams=4, streams_min_mib=0).streams == 4
    assert client.transfer("12282b", single, dry_run=False, streams=1).streams == 1

    started = [line.split(" ", 2) for line in log.read_text().splitlines()]
    assert [(here, above) for here, above, path in started if path == f"{streamed}/"] == [("made", "made")] * 5
    assert [(here, above) for here, above, path in started if path == f"{single}/"] == [("missing", "made")]
    assert tree_differences(stack.source / "12282a", streamed) == []
    assert tree_differences(stack.source / "12282b", single) == []


def test_a_destination_whose_folders_cannot_be_made_fails_naming_the_folder(stack):
    stack.lay_out("12282a")
    (stack.root / "not-a-folder").write_text("a file where a project folder should be\n")
    with pytest.raises(RsyncError) as failed:
        SshSourceResource().client().transfer("12282a", stack.root / "not-a-folder" / "12282a" / "data", dry_run=False)
    assert failed.value.exit_code == 11
    assert f"cannot make the folder {stack.root / 'not-a-folder' / '12282a'}" in str(failed.value)
    assert "check free space and permissions under destination-root-path" in str(failed.value)
