"""Log files shared by several processes, and the lines of real Dagster runs (an instance on disk):
where they land, and that secrets never get there."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import dagster as dg
import pytest
import yaml

from assyncy_dagster.config import MASK, load_settings
from assyncy_dagster.logs import configure_logging
from assyncy_dagster_demo.testing.stack import ETC
from tests.support.helpers import (
    PORTAL_PASSWORD,
    TOKEN,
    config_with_secrets,
    log_text,
)

_WRITER = textwrap.dedent(
    """
    import logging, sys
    from assyncy_dagster.logs import SharedRotatingFileHandler
    handler = SharedRotatingFileHandler(sys.argv[1], max_bytes=1000, backup_count=50)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(300):
        handler.emit(logging.makeLogRecord({"msg": f"{sys.argv[2]} {i:04d}"}))
    """
)


def test_processes_sharing_a_file_lose_no_line_across_rotations(tmp_path):
    log = tmp_path / "sync.log"
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(log), f"w{n}"]) for n in range(3)]
    assert [w.wait(timeout=60) for w in writers] == [0, 0, 0]
    files = [p for p in tmp_path.glob("sync.log*") if not p.name.endswith(".lock")]
    lines = [line for p in files for line in p.read_text().splitlines()]
    assert sorted(lines) == sorted(f"w{n} {i:04d}" for n in range(3) for i in range(300))
    assert len(files) > 5  # 7,200 bytes in files of at most 1,000: rotated several times
    assert all(p.stat().st_size <= 1000 for p in files)


# -- Dagster run logs ----------------------------------------------------------


@dg.op
def _talk(context) -> None:
    context.log.info(f"op says hello with {PORTAL_PASSWORD}")
    logging.getLogger("assyncy.portal").info("GET /visits?access_token=%s 200", TOKEN)
    logging.getLogger("assyncy.portal").debug("debug detail from the portal")


@dg.job(name="repatriate_epn")
def _repatriation_like():
    _talk()


@dg.job(name="unknown_epn_alert")
def _alert_like():
    _talk()


@pytest.fixture
def run_logging_instance(tmp_path, monkeypatch):
    config = config_with_secrets(tmp_path)
    monkeypatch.setenv("ASSYNCY_CONFIG", str(config))
    home = tmp_path / "dagster_home"
    home.mkdir()
    # The python_logs lines as shipped in etc/dagster-postgres.yaml, on the single-host instance.
    instance_config = yaml.safe_load((ETC / "dagster.yaml").read_text())
    instance_config["python_logs"] = yaml.safe_load((ETC / "dagster-postgres.yaml").read_text())["python_logs"]
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_config))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield load_settings(config), instance


def test_run_logs_land_in_the_sync_log_masked(run_logging_instance):
    settings, instance = run_logging_instance
    result = _repatriation_like.execute_in_process(instance=instance)
    text = log_text(settings.log_files.sync)
    assert result.run_id in text
    assert "op says hello with " + MASK in text
    assert f"access_token={MASK} 200" in text
    assert "debug detail from the portal" not in text  # log-level INFO
    assert PORTAL_PASSWORD not in text and TOKEN not in text
    assert not settings.log_files.epnalert.exists() or result.run_id not in log_text(settings.log_files.epnalert)


def test_alert_run_logs_land_in_the_epnalert_log(run_logging_instance):
    settings, instance = run_logging_instance
    result = _alert_like.execute_in_process(instance=instance)
    assert "op says hello" in log_text(settings.log_files.epnalert)
    assert result.run_id not in log_text(settings.log_files.sync)


def test_managed_assyncy_lines_in_the_event_log_are_masked(run_logging_instance):
    _, instance = run_logging_instance
    result = _repatriation_like.execute_in_process(instance=instance)
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any(f"access_token={MASK}" in m for m in messages)
    assert not any(TOKEN in m for m in messages)


def test_run_lines_are_written_once_when_the_process_logs_to_the_same_file(run_logging_instance):
    settings, instance = run_logging_instance
    configure_logging(settings, "sync", console=False)
    _repatriation_like.execute_in_process(instance=instance)
    assert log_text(settings.log_files.sync).count(f"access_token={MASK} 200") == 1
