"""Recorded means identical (issue 17): what a recorded EPN promises, on every path that records one.

Real sshd with the read-only rrsync account, real rsync, a real Dagster instance; the
manifest beside data/ is checked with the admin's own tools (`xxhsum -c`, `bagit`).
"""

from __future__ import annotations

import os
import subprocess
import time

import bagit
import dagster as dg

from assyncy_dagster.definitions import build_definitions
from assyncy_dagster.facts import SensorCursor
from assyncy_dagster.names import REPATRIATION_JOB
from assyncy_dagster.resources.ssh_source import SshSourceResource
from assyncy_dagster.transfer.bag import read_manifest
from assyncy_dagster_demo.testing.copies import copy_entries
from assyncy_dagster_demo.testing.sshd import make_source_tree
from tests.support.helpers import (
    check_results,
    epn_data_metadata,
    failure_text,
    frames_in_folders,
    ticker,
)


def links_under(path):
    return {str(p.relative_to(path)): os.readlink(p) for p in path.rglob("*") if p.is_symlink()}


def verify_on_its_own(stack, epn: str):
    """The stand-alone check, as `verify_epn_data` runs it from the UI or the CLI."""
    if epn not in stack.instance.get_dynamic_partitions("epn"):
        stack.instance.add_dynamic_partitions("epn", [epn])
    job = build_definitions(str(stack.config_path)).resolve_job_def("verify_epn_data")
    result = job.execute_in_process(partition_key=epn, instance=stack.instance, raise_on_error=False)
    return result, check_results(result)


def an_epn_with_links_and_an_empty_folder(stack, epn: str = "12282a"):
    make_source_tree(stack.source, epn, frames_in_folders(folders=4, per_folder=4))
    top = stack.source / epn
    (top / "run_0" / "empty").mkdir()  # beamline software makes folders it may not fill
    os.symlink("run_1/img_000.cbf", top / "first.cbf")
    os.symlink("../run_0", top / "run_2" / "previous")
    return top


# -- the manifest, checked without this tool ----------------------------------------------


def test_the_manifest_beside_data_is_verified_by_xxhsum(stack):
    stack.lay_out("12282a")
    result = stack.materialize("12282a")
    assert result.success, failure_text(result)
    epn_folder = stack.destination("ny79", "12282a").parent
    checked = subprocess.run(
        ["xxhsum", "-c", "manifest-xxh128.txt"], cwd=epn_folder, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count(": OK") == 5  # 3 frames, the log, .info
    meta = epn_data_metadata(result)
    assert (meta["files_verified_by_content"], meta["files_verified_by_size_only"]) == (5, 0)
    recorded = read_manifest(epn_folder)
    assert recorded is not None and meta["manifest_digest"] == recorded.digest
    info = (epn_folder / "bag-info.txt").read_text()
    assert "EPN: 12282a" in info and "Proposal: 12282" in info and "Visit-End:" in info

    # A frame corrupted at home fails xxhsum: the manifest is the facility's content, not ours.
    frame = stack.destination("ny79", "12282a") / "frames" / "img_0001.cbf"
    data = bytearray(frame.read_bytes())
    data[100] ^= 0x01
    frame.write_bytes(bytes(data))
    again = subprocess.run(["xxhsum", "-c", "manifest-xxh128.txt"], cwd=epn_folder, capture_output=True, text=True)
    assert again.returncode != 0 and "img_0001.cbf: FAILED" in again.stdout


def test_with_md5_the_epn_folder_is_a_valid_bagit_bag(stack):
    stack.configure(**{"checksum-algorithm": "md5"})
    stack.lay_out("12282a")
    top = stack.source / "12282a"
    os.symlink("frames/img_0001.cbf", top / "first.cbf")
    result = stack.materialize("12282a")
    assert result.success, failure_text(result)
    epn_folder = stack.destination("ny79", "12282a").parent
    (epn_folder / "README.txt").write_text("a user's note beside data/ is not part of the payload")
    bag = bagit.Bag(str(epn_folder))
    bag.validate()  # raises BagValidationError naming what is wrong
    assert bag.info["EPN"] == "12282a"
    assert (epn_folder / "README.txt").exists()


# -- items 1 and 2: streams are a single stream ---------------------------------------------


def test_a_four_stream_copy_equals_a_single_stream_copy_entry_by_entry(stack):
    stack.configure(**{"transfer-streams": 4, "transfer-streams-min-mib": 0})
    an_epn_with_links_and_an_empty_folder(stack)
    client = SshSourceResource().client()
    streamed = client.transfer("12282a", stack.root / "streams" / "data", dry_run=False, streams=4, streams_min_mib=0)
    single = client.transfer("12282a", stack.root / "single" / "data", dry_run=False, streams=1)
    assert streamed.streams == 4 and single.streams == 1
    four, one = copy_entries(stack.root / "streams" / "data"), copy_entries(stack.root / "single" / "data")
    assert four == one
    assert four[""][1] & 0o2000 and four["run_0/empty"][0] == "folder"  # setgid on the top; the empty folder
    assert four["first.cbf"][3] == "run_1/img_000.cbf"
    # The checksums of the streamed files survive into the one tree the step verifies.
    assert all(e.checksum for p, e in (streamed.tree or {}).items() if e.kind.value == "f")


def test_streams_refuse_a_link_leaving_the_epn_and_record_nothing(stack):
    stack.configure(**{"transfer-streams": 4, "transfer-streams-min-mib": 0})
    top = an_epn_with_links_and_an_empty_folder(stack)
    os.symlink("/etc/hostname", top / "run_3" / "hostname")
    result = stack.materialize("12282a")
    assert not result.success
    assert "run_3/hostname -> /etc/hostname" in failure_text(result)
    assert stack.ignored() == []
    assert "run_3/hostname" not in links_under(stack.destination("ny79", "12282a"))


# -- item 4: the stand-alone check is the same verification ---------------------------------


def test_the_check_on_its_own_never_records_an_epn_without_files(stack):
    (stack.source / "12282a" / "frames").mkdir(parents=True)
    stack.destination("ny79", "12282a").mkdir(parents=True)
    _, [check] = verify_on_its_own(stack, "12282a")
    assert not check.passed and "holds no files" in check.description
    assert stack.ignored() == []


def test_the_check_on_its_own_refuses_a_fifo_and_a_link_leaving_the_epn(stack):
    stack.lay_out("12282a")
    assert stack.materialize("12282a").success and stack.ignored() == ["12282a"]
    path = stack.settings().ignore
    path.write_text("previouslySynched: []\n")  # an admin takes it out to ask again whether it is intact
    os.mkfifo(stack.source / "12282a" / "frames" / "pipe")
    os.symlink("../../12282b", stack.source / "12282a" / "frames" / "next")
    _, [check] = verify_on_its_own(stack, "12282a")
    assert not check.passed
    assert "frames/pipe" in check.description and "frames/next -> ../../12282b" in check.description
    assert stack.ignored() == []


# -- item 5: links judged by where they resolve ---------------------------------------------


def test_a_link_escaping_through_another_link_is_refused_naming_it(stack):
    stack.lay_out("12282a")
    deep = stack.source / "12282a" / "a" / "b"
    deep.mkdir(parents=True)
    os.symlink("../..", deep / "c")  # the EPN's top: harmless on its own
    os.symlink("c/../../..", deep / "L")  # c is the top, so this is two levels above it
    result = stack.materialize("12282a")
    assert not result.success
    assert "a/b/L -> c/../../.." in failure_text(result)
    assert stack.ignored() == []
    assert links_under(stack.destination("ny79", "12282a")) == {"a/b/c": "../.."}


def test_a_link_whose_name_holds_an_arrow_is_read_whole_and_removed_at_home(stack):
    stack.lay_out("12282a")
    os.symlink("/etc/passwd", stack.source / "12282a" / "x -> ok")
    result = stack.materialize("12282a")
    assert not result.success
    assert "x -> ok -> /etc/passwd" in failure_text(result)
    assert links_under(stack.destination("ny79", "12282a")) == {}
    assert stack.ignored() == []


# -- late data by mtime: a same-size rewrite is found within resync-days -----------------


def test_a_frame_rewritten_at_the_same_size_is_found_and_fetched_again(stack):
    stack.configure(**{"resync-days": 30})  # the demo visit of 12282a ended 20 days ago
    stack.lay_out("12282a")
    assert stack.materialize("12282a").success and stack.ignored() == ["12282a"]
    tick, state = ticker(stack)
    tick()
    frame = stack.source / "12282a" / "frames" / "img_0002.cbf"
    frame.write_bytes(b"r" * frame.stat().st_size)  # reprocessed in place: same size, new content
    later = time.time() + 60
    os.utime(frame, (later, later))
    state["cursor"] = SensorCursor().dumps()  # the next full refresh
    [request] = [r for r in tick().run_requests if r.job_name == REPATRIATION_JOB]
    job = build_definitions(str(stack.config_path)).resolve_job_def(REPATRIATION_JOB)
    run = job.execute_in_process(instance=stack.instance, run_config=request.run_config, tags=request.tags)
    assert run.success
    assert (stack.destination("ny79", "12282a") / "frames" / "img_0002.cbf").read_bytes() == frame.read_bytes()
    [materialization] = [
        e.event_specific_data.materialization
        for e in run.get_asset_materialization_events()
        if e.event_specific_data.materialization.asset_key == dg.AssetKey("epn_data")
    ]
    change = materialization.metadata["change"].value
    assert "fetched again (changed at the source): frames/img_0002.cbf" in change, change
    assert materialization.metadata["files_transferred"].value == 1
