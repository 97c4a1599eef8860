"""Nothing is recorded that is not complete: symlinks, missing project folders, data that grows.

Real sshd with the read-only rrsync account, real rsync, a real Dagster instance.
"""

import os

import dagster as dg

from assyncy_dagster.definitions import build_definitions
from tests.support.helpers import check_results, epn_data_metadata, failure_text, files_under


def links_under(path):
    return {str(p.relative_to(path)): os.readlink(p) for p in path.rglob("*") if p.is_symlink()}


def test_symlinks_inside_the_epn_arrive_as_the_same_links_and_the_check_counts_them(stack):
    stack.lay_out("12282a")
    epn = stack.source / "12282a"
    os.symlink("frames/img_0001.cbf", epn / "first.cbf")
    os.symlink("../frames", epn / "processing" / "frames")  # a folder link, still inside the EPN
    result = stack.materialize("12282a")
    assert result.success, failure_text(result)
    dest = stack.destination("ny79", "12282a")
    assert links_under(dest) == {"first.cbf": "frames/img_0001.cbf", "processing/frames": "../frames"}
    assert (dest / "first.cbf").read_bytes() == (epn / "frames" / "img_0001.cbf").read_bytes()
    assert epn_data_metadata(result)["source_symlinks"] == 2
    [check] = check_results(result)
    assert check.passed and check.metadata["source_symlinks"].value == 2
    assert stack.ignored() == ["12282a"]

    # A link lost at home is a failed check, named, like a lost file.
    (dest / "first.cbf").unlink()
    verify = build_definitions(str(stack.config_path)).resolve_job_def("verify_epn_data")
    again = verify.execute_in_process(partition_key="12282a", instance=stack.instance, raise_on_error=False)
    [check] = check_results(again)
    assert not check.passed and "first.cbf" in check.description


def test_a_symlink_leaving_the_epn_fails_naming_it_and_nothing_is_recorded(stack):
    stack.lay_out("12282a", "12282b")
    os.symlink("/etc/hostname", stack.source / "12282a" / "hostname")
    os.symlink("../../12282b/frames/img_0001.cbf", stack.source / "12282a" / "frames" / "borrowed.cbf")
    result = stack.materialize("12282a")
    assert not result.success
    text = failure_text(result)
    assert "hostname -> /etc/hostname" in text and "frames/borrowed.cbf" in text and "outside the EPN" in text
    assert stack.ignored() == []
    dest = stack.destination("ny79", "12282a")
    assert links_under(dest) == {}, "a link pointing outside the EPN was left at home"
    assert "frames/img_0001.cbf" in files_under(dest)  # the real files did arrive; only recording is refused


def test_a_missing_project_folder_is_refused_unless_create_project_folders(stack):
    stack.configure(epn_cap_map={"12282": "ny97"}, **{"create-project-folders": False})
    (stack.destination_root / "ny97").rmdir()  # a typo: ny97 for ny79, a folder nobody made
    stack.lay_out("12282a")
    result = stack.materialize("12282a")
    assert not result.success
    text = failure_text(result)
    assert str(stack.destination_root / "ny97") in text and "create-project-folders" in text
    assert not (stack.destination_root / "ny97").exists()
    assert stack.ignored() == []

    stack.configure(**{"create-project-folders": True})
    (stack.destination_root / "ny97").rmdir() if (stack.destination_root / "ny97").exists() else None
    result = stack.materialize("12282a")
    assert result.success, failure_text(result)
    assert "frames/img_0001.cbf" in files_under(stack.destination("ny97", "12282a"))


def test_a_re_sync_says_what_changed_at_the_source(stack):
    stack.lay_out("12282a")
    first = stack.materialize("12282a")
    assert epn_data_metadata(first)["change"] == "first verified sync"
    (stack.source / "12282a" / "processing" / "late.mtz").write_bytes(b"x" * 1000)
    second = stack.materialize("12282a")
    assert second.success
    change = epn_data_metadata(second)["change"]
    assert "+1 file(s), +1000 bytes" in change, change
    third = stack.materialize("12282a")
    assert epn_data_metadata(third)["change"].startswith("no change")


def test_dry_run_of_a_missing_project_folder_says_so_too(stack):
    stack.configure(execute=False, epn_cap_map={"12282": "nobody"})
    (stack.destination_root / "nobody").rmdir()
    stack.lay_out("12282a")
    result = stack.materialize("12282a")
    assert not result.success and "does not exist" in failure_text(result)
    assert [
        e
        for e in result.get_asset_materialization_events()
        if e.event_specific_data.materialization.asset_key == dg.AssetKey("epn_data")
    ] == []
