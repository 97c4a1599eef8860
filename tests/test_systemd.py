"""The systemd units under etc/: valid for systemd, and running what the README promises."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ETC = Path(__file__).resolve().parent.parent / "etc"
UNITS = sorted([*(ETC / "systemd").glob("*.service"), *(ETC / "scale-out").glob("*.service")])
INSTALL_BIN = "/opt/assyncy/bin/"
ENV_FILE = "/etc/assyncy/assyncy.env"
# Where this test's interpreter keeps the console scripts a `pip install` puts in /opt/assyncy/bin.
VENV_BIN = Path(sys.executable).parent


def entries(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Each section's (key, value) pairs in order; systemd allows a key more than once."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not KEY=VALUE"
        current.append((key.strip(), value.strip()))
    return sections


def value(path: Path, section: str, key: str) -> str:
    found = [v for k, v in entries(path).get(section, []) if k == key]
    assert found, f"{path.name}: [{section}] has no {key}="
    return found[-1]


def exec_start(path: Path) -> list[str]:
    return value(path, "Service", "ExecStart").split()


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
    name = program[len(INSTALL_BIN):]
    if name == "dagster-celery":
        pytest.importorskip("dagster_celery", reason="dagster-celery is an optional install")
    assert (VENV_BIN / name).exists(), f"{name} is not a console script of the installed packages"


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
        "/opt/assyncy/bin/mxsync", "--config", "/opt/assyncy/etc/config.yml", "--execute",
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


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify_accepts_the_unit(path, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    program = exec_start(path)[0][len(INSTALL_BIN):]
    if not (VENV_BIN / program).exists():
        pytest.skip(f"{program} is not installed here")
    # verify insists that ExecStart exists: point it at this environment's copy of the same program.
    copy = tmp_path / path.name
    copy.write_text(path.read_text().replace(INSTALL_BIN, f"{VENV_BIN}/"))
    for other in UNITS:  # Conflicts= names the other units; let verify find them beside this one
        if other != path:
            (tmp_path / other.name).write_text(other.read_text().replace(INSTALL_BIN, f"{VENV_BIN}/"))
    done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    # verify exits 0 even for an unknown key, so its warnings about this file count as failures too.
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if path.name in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr
