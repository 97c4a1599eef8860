"""Parallel streams against the real sshd: the same result as one rsync, and one rsync below the threshold."""

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
