"""The fixity audit against the real stack: EPNs brought home over a real sshd with real rsync, then
damaged at home; the audit fails that partition's intact_at_home check, the report shows it
`corrupt`, and a backfill of the partition repairs it."""

from __future__ import annotations

import os
import time

import dagster as dg

from assyncy_dagster.definitions import build_definitions
from assyncy_dagster.fixity import findings_path, read_findings
from assyncy_dagster.names import FIXITY_JOB
from assyncy_dagster.run_configs import batch_run_config
from assyncy_dagster.sensors.report_refresh import repatriation_report_refresh
from tests.integration.test_report_asset import materialize_report, states
from tests.support.helpers import check_results, epn_data_metadata, failure_text

INTACT = dg.AssetCheckKey(dg.AssetKey("epn_data"), "intact_at_home")


def audit(stack, epns: list[str] | None = None) -> dg.ExecuteInProcessResult:
    """One run of the fixity_audit job, as the weekly schedule or the UI launches it."""
    job = build_definitions(str(stack.config_path)).resolve_job_def(FIXITY_JOB)
    run_config = {"ops": {"audit_fixity": {"config": {"epns": epns}}}} if epns else None
    return job.execute_in_process(instance=stack.instance, run_config=run_config, raise_on_error=False)


def intact_at_home(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.partition: e for e in check_results(result) if e.check_name == INTACT.name}


def flip_a_bit(path, offset: int = 1000) -> None:
    """Damage a file as rot on a disk would: one bit, same size, same mtime."""
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_bit_flipped_at_home_fails_the_audit_shows_corrupt_and_a_backfill_repairs_it(stack):
    stack.lay_out("12282a", "13001a")
    for epn in ("12282a", "13001a"):
        brought = stack.materialize(epn)
        assert brought.success, failure_text(brought)

    first = audit(stack)
    assert first.success, failure_text(first)
    assert {epn: e.passed for epn, e in intact_at_home(first).items()} == {"12282a": True, "13001a": True}
    meta = {k: v.value for k, v in intact_at_home(first)["12282a"].metadata.items()}
    assert meta["files_verified_by_content"] == 5 and meta["bytes_read"] > 3 * 32 * 1024

    frame = stack.destination("ny79", "12282a") / "frames" / "img_0002.cbf"
    flip_a_bit(frame)
    found = audit(stack)
    assert not found.success  # the run says so too, naming the EPN and the repair
    assert "12282a" in failure_text(found) and "backfill" in failure_text(found)
    checks = intact_at_home(found)
    assert checks["13001a"].passed
    damaged = checks["12282a"]
    assert not damaged.passed and damaged.severity == dg.AssetCheckSeverity.ERROR
    assert "corrupt: frames/img_0002.cbf" in damaged.description
    rows = [record.data for record in damaged.metadata["problems"].records]
    assert rows == [{"path": "frames/img_0002.cbf", "problem": "corrupt"}]

    report = states(materialize_report(stack))
    assert report["12282a"]["state"] == "corrupt"
    assert "frames/img_0002.cbf (corrupt)" in report["12282a"]["detail"]
    assert "backfill" in report["12282a"]["detail"]
    assert report["13001a"]["state"] == "home"

    # The repair the report names: one backfill of the partition fetches the frame again.
    repaired = stack.materialize("12282a")
    assert repaired.success, failure_text(repaired)
    assert epn_data_metadata(repaired)["files_transferred"] == 1
    assert frame.read_bytes() == (stack.source / "12282a" / "frames" / "img_0002.cbf").read_bytes()
    assert read_findings(findings_path(stack.instance.storage_directory())) == {}

    again = audit(stack)
    assert again.success, failure_text(again)
    assert all(e.passed for e in intact_at_home(again).values())
    assert states(materialize_report(stack))["12282a"]["state"] == "home"


def test_a_deleted_file_and_a_file_edited_at_home_fail_the_audit_of_one_epn(stack):
    stack.lay_out("12282a")
    assert stack.materialize("12282a").success
    data = stack.destination("ny79", "12282a")
    (data / "frames" / "img_0001.cbf").unlink()
    with (data / "processing" / "xds.log").open("a") as log:
        log.write("a user's note\n")
    found = audit(stack, ["12282a"])
    assert not found.success
    meta = {k: v.value for k, v in intact_at_home(found)["12282a"].metadata.items()}
    assert (meta["corrupt"], meta["missing"], meta["changed_at_home"]) == (0, 1, 1)
    assert states(materialize_report(stack))["12282a"]["state"] == "corrupt"


def test_an_epn_recorded_without_a_manifest_is_reported_as_verified_by_size_only(stack):
    stack.lay_out("12282a")
    assert stack.materialize("12282a").success
    for name in os.listdir(stack.destination("ny79", "12282a").parent):
        if name != "data":  # as the old tool left it: data/ and nothing beside it
            os.unlink(stack.destination("ny79", "12282a").parent / name)
    result = audit(stack)
    assert result.success  # nothing found damaged; it cannot say more
    check = intact_at_home(result)["12282a"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "no manifest: verified by size only" in check.description


def test_an_epn_in_transfer_is_skipped_and_a_second_audit_is_refused(stack):
    stack.lay_out("12282a")
    assert stack.materialize("12282a").success
    definitions = build_definitions(str(stack.config_path))
    stack.instance.create_run_for_job(
        job_def=definitions.resolve_job_def("repatriate_epn"),
        run_config=batch_run_config(["12282a"]),
        tags={"assyncy/epn/12282a": "running"},
        status=dg.DagsterRunStatus.STARTED,
    )
    skipped = audit(stack)
    assert skipped.success and intact_at_home(skipped) == {}  # its files are being replaced: not judged
    messages = [entry.user_message for entry in stack.instance.all_logs(skipped.run_id)]
    assert any("EPN 12282a: not audited" in m and "transferring it right now" in m for m in messages)

    running = stack.instance.create_run_for_job(
        job_def=definitions.resolve_job_def(FIXITY_JOB), status=dg.DagsterRunStatus.STARTED
    )
    refused = audit(stack)
    assert not refused.success
    assert f"run {running.run_id} is auditing already" in failure_text(refused)


def test_the_report_is_rebuilt_after_an_audit_ends(stack):
    stack.lay_out("12282a")
    assert stack.materialize("12282a").success
    start = time.time()
    flip_a_bit(stack.destination("ny79", "12282a") / "frames" / "img_0001.cbf")
    assert not audit(stack).success
    request = repatriation_report_refresh(dg.build_sensor_context(instance=stack.instance, cursor=str(start)))
    assert isinstance(request, dg.RunRequest)  # so the report shows `corrupt` without waiting for 00:30
