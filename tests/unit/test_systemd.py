"""The systemd units under etc/: valid for systemd, and running what the README promises."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from assyncy_dagster_demo.testing.stack import ETC
from tests.support.helpers import BIN, INSTALL_BIN, UNITS, entries, exec_start, value

ENV_FILE = "/etc/assyncy/assyncy.env"


def unit(name: str) -> Path:
    [path] = [p for p in UNITS if p.name == name]
    return path


def test_the_units_are_all_found():
    assert {p.name for p in UNITS} == {
        "assyncy-dagster-daemon.service",
        "assyncy-dagster-webserver.service",
        "mxsync.service",
        "assyncy-celery-worker.service",
    }


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_has_what_a_service_needs(path):
    assert value(path, "Unit", "Description")
    assert Path(exec_start(path)[0]).is_absolute()
    assert value(path, "Service", "User") == "assyncy"
    assert value(path, "Service", "EnvironmentFile") == ENV_FILE
    assert Path(value(path, "Service", "WorkingDirectory")).is_absolute()
    assert value(path, "Service", "Restart") == "on-failure"
    assert value(path, "Install", "WantedBy") == "multi-user.target"


@pytest.mark.parametrize("path", [p for p in UNITS if p.name != "mxsync.service"], ids=lambda p: p.name)
def test_stop_reaches_every_dagster_run_worker_directly(path):
    # Dagster's run workers are not children that the main process stops for us:
    # `mixed` would SIGKILL them as soon as it exited, leaving runs marked as started.
    assert value(path, "Service", "KillMode") == "control-group"
    assert int(value(path, "Service", "TimeoutStopSec")) >= 30


def test_mxsync_stop_goes_through_mxsync_which_stops_its_workers_once():
    path = unit("mxsync.service")
    assert value(path, "Service", "KillMode") == "mixed"
    assert value(path, "Service", "KillSignal") == "SIGTERM"
    assert int(value(path, "Service", "TimeoutStopSec")) >= 30


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_runs_a_command_that_the_package_installs(path):
    program = exec_start(path)[0]
    assert program.startswith(INSTALL_BIN)
    name = program[len(INSTALL_BIN) :]
    if name == "dagster-celery":
        pytest.importorskip("dagster_celery", reason="dagster-celery is an optional install")
    assert (BIN / name).exists(), f"{name} is not a console script of the installed packages"


def test_daemon_and_webserver_load_the_same_code_location():
    daemon = exec_start(unit("assyncy-dagster-daemon.service"))
    webserver = exec_start(unit("assyncy-dagster-webserver.service"))
    assert daemon[1:] == ["run", "-m", "assyncy_dagster.definitions"]
    assert webserver[1:] == ["-m", "assyncy_dagster.definitions"]


def test_webserver_listens_on_loopback_port_3000_by_default():
    environment = [v for k, v in entries(unit("assyncy-dagster-webserver.service"))["Service"] if k == "Environment"]
    assert "DAGSTER_WEBSERVER_HOST=127.0.0.1" in environment
    assert "DAGSTER_WEBSERVER_PORT=3000" in environment


def test_mxsync_unit_runs_the_old_command_line():
    assert exec_start(unit("mxsync.service")) == [
        "/opt/assyncy/bin/mxsync",
        "--config",
        "/opt/assyncy/etc/config.yml",
        "--execute",
    ]


def test_mxsync_and_the_daemon_never_run_together():
    assert value(unit("mxsync.service"), "Unit", "Conflicts") == "assyncy-dagster-daemon.service"
    assert value(unit("assyncy-dagster-daemon.service"), "Unit", "Conflicts") == "mxsync.service"


def test_environment_file_example_names_the_instance_and_the_config():
    example = ETC / "systemd" / "assyncy.env.example"
    settings = {}
    for line in example.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", line), f"not NAME=value as systemd reads it: {line!r}"
            name, _, text = line.partition("=")
            settings[name] = text
    assert Path(settings["DAGSTER_HOME"]).is_absolute()
    # mxsync.service passes --config; the daemon and webserver find the same file through ASSYNCY_CONFIG.
    assert settings["ASSYNCY_CONFIG"] == exec_start(unit("mxsync.service"))[2]
