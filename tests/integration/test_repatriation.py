"""Materialising an EPN partition brings its data home, verified, or fails clearly."""

import os
import stat

import dagster as dg

from assyncy_dagster.claims import claim_epn
from assyncy_dagster.definitions import build_definitions
from assyncy_dagster.outcomes import Outcome
from assyncy_dagster.run_configs import batch_run_config
from assyncy_dagster.run_records import epn_history
from tests.support.helpers import check_results, epn_data_metadata, failure_text, files_under

CHECK = dg.AssetCheckKey(dg.AssetKey("epn_data"), "matches_source")


def test_dry_run_writes_nothing_and_is_an_observation_never_a_materialisation(stack):
    stack.configure(execute=False)
    stack.lay_out("12282a")
    result = stack.materialize("12282a")
    assert result.success
    # The project folders exist beforehand (as on a real site); nothing appears inside them.
    assert not any(stack.destination_root.rglob("*/*")), "a dry-run wrote under the destination"
    # The UI must never show the partition as materialised (home) after a dry-run.
    assert not [
        e
        for e in result.get_asset_materialization_events()
        if e.event_specific_data.materialization.asset_key == dg.AssetKey("epn_data")
    ]
    assert stack.instance.get_materialized_partitions(dg.AssetKey("epn_data")) == set()
    [observation] = [
        e.event_specific_data.asset_observation
        for e in result.get_asset_observation_events()
        if e.event_specific_data.asset_observation.asset_key == dg.AssetKey("epn_data")
    ]
    meta = {k: v.value for k, v in observation.metadata.items()}
    assert observation.partition == "12282a"
    assert meta["dry_run"] is True and meta["mode"].startswith("DRY-RUN")
    assert meta["files_transferred"] == 5  # 3 frames, the log, .info
    assert check_results(result) == []  # nothing was copied, so nothing was verified
    assert stack.ignored() == []


def test_real_run_copies_exactly_the_expected_files_and_marks_the_epn(stack):
    stack.lay_out("12282a")
    result = stack.materialize("12282a")
    assert result.success, failure_text(result)
    dest = stack.destination("ny79", "12282a")
    assert files_under(dest) == {
        "frames/img_0001.cbf",
        "frames/img_0002.cbf",
        "frames/img_0003.cbf",
        "processing/xds.log",
        ".info",
    }
    mode = (dest / "frames").stat().st_mode
    assert mode & stat.S_ISGID and not mode & stat.S_IWOTH, oct(mode)
    meta = epn_data_metadata(result)
    assert meta["dry_run"] is False
    assert meta["files_at_destination"] == 5
    assert meta["bytes_transferred"] == 3 * 32 * 1024 + len(b"XDS run finished\n") + len(b"beamline: MX2\n")
    [check] = check_results(result)
    assert check.passed
    assert stack.ignored() == ["12282a"]
    record = stack.instance.event_log_storage.get_latest_asset_check_execution_by_key([CHECK])[CHECK]
    assert record.partition == "12282a"


def test_second_run_is_a_no_op(stack):
    stack.lay_out("12282a")
    assert stack.materialize("12282a").success
    again = stack.materialize("12282a")
    assert again.success
    assert epn_data_metadata(again)["files_transferred"] == 0


def test_source_file_that_changed_size_is_fetched_again(stack):
    stack.lay_out("12282a")
    assert stack.materialize("12282a").success
    frame = stack.source / "12282a" / "frames" / "img_0002.cbf"
    frame.write_bytes(os.urandom(40 * 1024))
    result = stack.materialize("12282a")
    assert result.success
    assert epn_data_metadata(result)["files_transferred"] == 1
    assert (stack.destination("ny79", "12282a") / "frames" / "img_0002.cbf").read_bytes() == frame.read_bytes()


def test_check_on_its_own_catches_a_file_deleted_from_the_destination(stack):
    stack.lay_out("12282a")
    assert stack.materialize("12282a").success
    (stack.destination("ny79", "12282a") / "frames" / "img_0003.cbf").unlink()
    verify = build_definitions(str(stack.config_path)).resolve_job_def("verify_epn_data")
    result = verify.execute_in_process(partition_key="12282a", instance=stack.instance, raise_on_error=False)
    assert not result.success
    [check] = check_results(result)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert "frames/img_0003.cbf" in check.description
    # In the UI, the failures are a table: path, problem, sizes.
    rows = [record.data for record in check.metadata["problems"].records]
    assert rows == [
        {"path": "frames/img_0003.cbf", "problem": "missing", "source_bytes": None, "destination_bytes": None}
    ]


def test_unmapped_epn_is_refused(stack):
    stack.lay_out("14500a")
    result = stack.materialize("14500a")
    assert not result.success
    assert "not mapped" in failure_text(result) and "14500" in failure_text(result)
    assert not any(stack.destination_root.rglob("*/*"))


def test_running_visit_is_refused_unless_allowed(stack):
    stack.lay_out("13001b")
    refused = stack.materialize("13001b")
    assert not refused.success
    assert "visit still running (ends " in failure_text(refused)
    allowed = stack.materialize("13001b", run_config={"ops": {"epn_data": {"config": {"allow_running_visit": True}}}})
    assert allowed.success, failure_text(allowed)
    assert files_under(stack.destination("ab12", "13001b"))


def test_epn_missing_from_the_portal_fails_with_a_clear_message(stack):
    stack.lay_out("12999a")
    result = stack.materialize("12999a")
    assert not result.success
    assert "no visit" in failure_text(result)


def test_rsync_failure_fails_the_run_and_marks_nothing(stack):
    # 12282b's folder is missing on the host: rsync exits non-zero.
    result = stack.materialize("12282b")
    assert not result.success
    assert "rsync" in failure_text(result).lower() or "exit" in failure_text(result).lower()
    assert stack.ignored() == []


def test_a_backfill_range_records_each_epn_on_its_own_and_one_failure_spares_the_others(stack):
    """What a UI backfill runs (BackfillPolicy: up to 20 partitions per run): one run, each
    EPN its own materialisation and check result; a failing EPN does not stop the others."""
    from assyncy_dagster.assets.epn_data import epn_data, epn_data_matches_source
    from assyncy_dagster.assets.visits import portal_visits
    from assyncy_dagster.definitions import build_resources

    stack.lay_out("12282a", "12282b", "13001a")
    (stack.source / "12282b" / "frames" / "img_0001.cbf").chmod(0o600)  # unreadable by the SFTP account
    stack.instance.add_dynamic_partitions("epn", ["12282a", "12282b", "13001a"])
    result = dg.materialize(
        [portal_visits, epn_data, epn_data_matches_source],
        instance=stack.instance,
        resources=build_resources(),
        tags={"dagster/asset_partition_range_start": "12282a", "dagster/asset_partition_range_end": "13001a"},
        raise_on_error=False,
    )
    assert not result.success  # the run shows that something failed ...
    assert "12282b" in failure_text(result) and "1 of 3" in failure_text(result)
    assert sorted(stack.ignored()) == ["12282a", "13001a"]  # ... and the others are home
    materialized = {
        e.event_specific_data.materialization.partition
        for e in result.get_asset_materialization_events()
        if e.event_specific_data.materialization.asset_key == dg.AssetKey("epn_data")
    }
    assert materialized == {"12282a", "13001a"}
    checks = {c.partition: c.passed for c in check_results(result)}
    assert checks == {"12282a": True, "13001a": True}
    run = stack.instance.get_run_by_id(result.run_id)
    assert {k: v for k, v in run.tags.items() if k.startswith("assyncy/epn/")} == {
        "assyncy/epn/12282a": "home",
        "assyncy/epn/12282b": "failed",
        "assyncy/epn/13001a": "home",
    }


def test_an_epn_another_run_is_transferring_is_not_started_twice(stack):
    stack.lay_out("12282a")
    job = build_definitions(str(stack.config_path)).resolve_job_def("repatriate_epn")
    other = stack.instance.create_run_for_job(
        job_def=job,
        run_config=batch_run_config(["12282a"]),
        tags={"assyncy/epn/12282a": "running"},
        status=dg.DagsterRunStatus.STARTED,
    )
    assert claim_epn(stack.instance, "12282a", other.run_id) is None  # as its step does before rsync
    result = stack.materialize("12282a")
    assert result.success  # not the EPN's failure: no failure e-mail, no backoff
    assert not [
        e
        for e in result.get_asset_materialization_events()
        if e.event_specific_data.materialization.asset_key == dg.AssetKey("epn_data")
    ]
    messages = [entry.user_message for entry in stack.instance.all_logs(result.run_id)]
    assert any(f"run {other.run_id} is transferring it right now" in m for m in messages)
    assert files_under(stack.destination("ny79", "12282a")) == set()
    run = stack.instance.get_run_by_id(result.run_id)
    assert run.tags["assyncy/epn/12282a"] == "skipped"


def test_an_epn_whose_source_holds_no_files_is_held_back_never_recorded(stack):
    (stack.source / "12282a" / "frames").mkdir(parents=True)  # folders made at visit start, no data yet
    for folder in (stack.source / "12282a", stack.source / "12282a" / "frames"):
        os.chmod(folder, 0o755)
    result = stack.materialize("12282a")
    # Not a failure (no failure e-mail for data that is simply not there yet) and nothing recorded.
    assert result.success
    assert not [
        e
        for e in result.get_asset_materialization_events()
        if e.event_specific_data.materialization.asset_key == dg.AssetKey("epn_data")
    ]
    assert stack.ignored() == []
    run = stack.instance.get_run_by_id(result.run_id)
    assert run.tags["assyncy/epn/12282a"] == "empty"
    warnings = [e.message for e in stack.instance.all_logs(result.run_id) if e.level >= 30]
    assert any("holds no files" in m and "held back" in m for m in warnings), warnings
    # The sensor then holds it back with the reason, and looks again after the backoff.
    history = epn_history(stack.instance, "12282a")
    assert history.status is Outcome.EMPTY and history.consecutive_failures == 1


def test_setuid_and_setgid_bits_never_arrive(stack):
    stack.lay_out("12282a")
    frame = stack.source / "12282a" / "frames" / "img_0001.cbf"
    frame.chmod(0o7755)
    result = stack.materialize("12282a")
    assert result.success
    mode = (stack.destination("ny79", "12282a") / "frames" / "img_0001.cbf").stat().st_mode
    assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX), oct(mode)
