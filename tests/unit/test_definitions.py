"""The code location loads from $ASSYNCY_CONFIG, or says clearly why not."""

import shutil

import dagster as dg
import pytest
import yaml

from assyncy_dagster.config import ConfigError
from assyncy_dagster.definitions import build_definitions
from assyncy_dagster_demo.testing.stack import ETC


def test_sample_config_builds_the_whole_location(tmp_path):
    shutil.copy(ETC / "config.yml", tmp_path / "config.yml")
    defs = build_definitions(str(tmp_path / "config.yml"))
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    assert {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()} == {
        "portal_visits",
        "epn_data",
        "repatriation_report",
    }
    report = repo.asset_graph.get(dg.AssetKey("repatriation_report"))
    assert report.parent_keys == {dg.AssetKey("epn_data")} and not report.is_partitioned
    assert {s.name for s in repo.sensor_defs} == {
        "epn_sensor",
        "repatriation_failure_alert",
        "repatriation_report_refresh",
    }
    assert {s.name for s in repo.schedule_defs} == {
        "unknown_epn_digest",
        "repatriation_report_daily",
        "fixity_audit_weekly",
    }
    assert repo.has_job("repatriation_report_job") and repo.has_job("fixity_audit")
    checks = {key.name for key in repo.asset_graph.asset_check_keys}
    assert checks == {"matches_source", "intact_at_home"}
    epn_sensor = repo.get_sensor_def("epn_sensor")
    assert epn_sensor.minimum_interval_seconds == 30  # looks often; refreshes every sync-frequency-hours
    assert epn_sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_invalid_config_fails_with_the_check_config_message(tmp_path):
    data = yaml.safe_load((ETC / "config.yml").read_text())
    del data["host"]
    (tmp_path / "config.yml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"config.yml: host: missing"):
        build_definitions(str(tmp_path / "config.yml"))


def test_daily_digest_runs_at_one_in_the_configured_time_zone(tmp_path):
    data = yaml.safe_load((ETC / "config.yml").read_text()) | {"timezone": "Australia/Melbourne"}
    (tmp_path / "config.yml").write_text(yaml.safe_dump(data))
    schedule = (
        build_definitions(str(tmp_path / "config.yml")).get_repository_def().get_schedule_def("unknown_epn_digest")
    )
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 1 * * *", "Australia/Melbourne")


def test_fixity_audit_runs_weekly_on_sunday_night_in_the_configured_time_zone(tmp_path):
    data = yaml.safe_load((ETC / "config.yml").read_text()) | {"timezone": "Australia/Melbourne"}
    (tmp_path / "config.yml").write_text(yaml.safe_dump(data))
    schedule = (
        build_definitions(str(tmp_path / "config.yml")).get_repository_def().get_schedule_def("fixity_audit_weekly")
    )
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 3 * * 0", "Australia/Melbourne")
    assert schedule.job_name == "fixity_audit" and schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_unknown_time_zone_is_a_config_error(tmp_path):
    data = yaml.safe_load((ETC / "config.yml").read_text()) | {"timezone": "Mars/Olympus"}
    (tmp_path / "config.yml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="timezone: unknown time zone 'Mars/Olympus'"):
        build_definitions(str(tmp_path / "config.yml"))
