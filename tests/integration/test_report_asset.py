"""repatriation_report against the real stack: portal simulator, real sshd, real instance."""

import csv
import time
from pathlib import Path

import dagster as dg

from assyncy_dagster.assets.report import repatriation_report
from assyncy_dagster.cycle import run_cycle
from assyncy_dagster.definitions import build_definitions, build_resources
from assyncy_dagster.names import REPATRIATION_JOB, REPORT_JOB
from assyncy_dagster.outcomes import Outcome
from assyncy_dagster.sensors.report_refresh import repatriation_report_refresh
from tests.support.faultkit import tree_snapshot


def materialize_report(stack, run_config: dict | None = None) -> dict:
    result = dg.materialize(
        [repatriation_report], instance=stack.instance, resources=build_resources(), run_config=run_config
    )
    assert result.success
    [event] = result.get_asset_materialization_events()
    return event.event_specific_data.materialization.metadata


def states(metadata) -> dict[str, dict]:
    with open(metadata["csv"].value, newline="") as handle:
        return {row["epn"]: row for row in csv.DictReader(handle)}


def test_report_reconciles_portal_host_destination_and_runs_and_a_backfill_repairs_a_partial_epn(stack):
    stack.lay_out("12282a", "13001a", "14500a")
    assert stack.materialize("12282a").success
    assert stack.materialize("13001a").success
    assert not stack.materialize("12282b").success  # in the portal, but no folder on the host
    (stack.destination("ny79", "12282a") / "frames" / "img_0002.cbf").unlink()  # lost after it was recorded

    metadata = materialize_report(stack)
    rows = states(metadata)
    assert {epn: row["state"] for epn, row in rows.items()} == {
        "12282a": "partial",  # recorded, but the destination lost a frame
        "12282b": "failed",
        "13001a": "home",
        "13001b": "running",  # the visit ends tomorrow
        "14500a": "unmapped",
        "14777a": "unmapped",
    }
    home = rows["13001a"]
    assert (home["project"], home["equipment"], home["principal_scientist"]) == ("ab12", "23", "Aroha Te Whare")
    assert home["source_files"] == home["destination_files"] == "5" and home["last_verified"]
    assert (rows["12282a"]["source_files"], rows["12282a"]["destination_files"]) == ("5", "4")
    assert "12282b" in rows["12282b"]["last_error"]

    # The files, linked from the metadata; the plot is visible in the UI as a markdown image.
    for key, suffix in (("csv", ".csv"), ("png", ".png"), ("html", ".html")):
        path = metadata[key].value
        assert path.startswith(str(Path(stack.instance.root_directory) / "reports")) and path.endswith(suffix)
    assert sorted(p.name for p in stack.destination_root.iterdir()) == ["ab12", "ny79"]  # project folders only
    assert Path(metadata["png"].value).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](data:image/png;base64," in metadata["plot"].value
    attention = metadata["attention"].value
    assert "| 12282a | ny79 | partial |" in attention and "| 13001a |" not in attention
    assert "partitions `12282a`" in attention  # the one backfill that repairs it
    assert metadata["repair_partitions"].value == "12282a"
    assert "| partial | 1 |" in metadata["totals_by_state"].value
    assert metadata["dagster/row_count"].value == 6

    # The repair the report proposes: one backfill of the partition fetches the lost frame.
    assert stack.materialize("12282a").success
    assert states(materialize_report(stack))["12282a"]["state"] == "home"


def test_report_refresh_asks_for_one_report_after_repatriation_runs_end(stack):
    stack.lay_out("12282a")
    start = time.time()
    assert stack.materialize("12282a").success
    context = dg.build_sensor_context(instance=stack.instance, cursor=str(start))
    request = repatriation_report_refresh(context)
    assert isinstance(request, dg.RunRequest) and request.run_key.startswith("report-after:")
    # Nothing has ended since: no second request.
    again = repatriation_report_refresh(dg.build_sensor_context(instance=stack.instance, cursor=context.cursor))
    assert isinstance(again, dg.SkipReason)
    # A report run that has not started yet covers what ends meanwhile.
    report_job = build_definitions(str(stack.config_path)).resolve_job_def(REPORT_JOB)
    stack.instance.create_run_for_job(report_job, status=dg.DagsterRunStatus.NOT_STARTED)
    assert stack.materialize("12282a").success
    waiting = repatriation_report_refresh(dg.build_sensor_context(instance=stack.instance, cursor=context.cursor))
    assert isinstance(waiting, dg.SkipReason) and "has not started yet" in waiting.skip_message


def test_an_explicit_report_dir_wins(stack):
    stack.configure(**{"report-dir": str(stack.root / "site-reports")})
    metadata = materialize_report(stack)
    assert metadata["csv"].value == str(stack.root / "site-reports" / "repatriation_report.csv")
    assert not (Path(stack.instance.root_directory) / "reports").exists()


def test_a_dry_run_report_writes_no_file_but_shows_its_metadata(stack):
    stack.configure(execute=False)
    metadata = materialize_report(stack)
    assert "not written" in metadata["files"].value and "csv" not in metadata
    assert metadata["epns"].value == 6 and "| 14500a |" in metadata["attention"].value
    assert not (Path(stack.instance.root_directory) / "reports").exists()
    # A run that copies for real (mxsync --execute) asks for the files whatever config.yml says.
    metadata = materialize_report(stack, {"ops": {"repatriation_report": {"config": {"execute": True}}}})
    assert Path(metadata["csv"].value).is_file()


def test_a_dry_run_cycle_and_its_report_write_nothing_outside_the_instance_and_the_logs(stack):
    stack.configure(execute=False)
    stack.lay_out("12282a", "13001a")
    before = tree_snapshot(stack.root)
    report = run_cycle(stack.config_path, stack.instance)
    # Each EPN dry-run once; a lane may take the other's EPN before that run starts (that run then
    # reports it left to another run, `skipped`).
    dry = sorted(r.partition for r in report.by_job(REPATRIATION_JOB) if r.outcome == Outcome.DRY_RUN.value)
    metadata = materialize_report(stack)  # as the daily schedule would
    after = tree_snapshot(stack.root)
    allowed = ("dagster_home", "etc/log")  # the instance, and the log files (and their folder)
    written = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k) and not k.startswith(allowed))
    assert dry == ["12282a", "13001a"], report.runs
    assert written == [], written
    assert metadata["epns"].value >= 2 and "not written" in metadata["files"].value
