"""What ships: the product's wheel carries etc/ and no stand-in; the stand-ins and the demo are the
second wheel (assyncy-dagster-demo). Both are built, installed into a fresh venv as a user would, and
`assyncy demo` is run from an empty folder: first with the product alone (it says what to install),
then with both (one watch cycle against the stand-ins)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.helpers import REPO

STAND_IN_PARTS = ("testing", "portal_sim", "demo", "assyncy_dagster_demo")


def _build_wheels(tmp_path: Path) -> tuple[Path, Path]:
    """The two wheels, built from copies, so that building leaves nothing in the checkout (build/,
    *.egg-info) that other runs share."""
    product = tmp_path / "product"
    shutil.copytree(REPO / "assyncy_dagster", product / "assyncy_dagster", symlinks=True, ignore=_ignored)
    shutil.copytree(REPO / "etc", product / "etc")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, product / name)
    demo = tmp_path / "demo-source"
    shutil.copytree(REPO / "assyncy-dagster-demo", demo, ignore=_ignored)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(tmp_path / "wheels"),
            str(product),
            str(demo),
        ],
        check=True,
        timeout=180,
    )
    (product_wheel,) = (tmp_path / "wheels").glob("assyncy_dagster-*.whl")
    (demo_wheel,) = (tmp_path / "wheels").glob("assyncy_dagster_demo-*.whl")
    return product_wheel, demo_wheel


def _ignored(folder: str, names: list[str]) -> set[str]:
    return {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}


def _install(venv: Path, *wheels: Path) -> None:
    """As a user would, from the wheels; uv (which `make setup` installs) reuses its cache."""
    uv = Path(sys.executable).parent / "uv"
    if uv.exists():
        command = [str(uv), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), *map(str, wheels)]
    else:
        command = [str(venv / "bin" / "pip"), "install", "-q", *map(str, wheels)]
    subprocess.run(command, check=True, timeout=600)


def _demo_once(venv: Path, folder: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """`assyncy demo --once` from the venv, run in `folder` as a user would."""
    command = [str(venv / "bin" / "assyncy"), "demo", "--once"]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_the_product_wheel_ships_no_stand_in_and_both_wheels_run_the_demo(tmp_path):
    product_wheel, demo_wheel = _build_wheels(tmp_path)

    with zipfile.ZipFile(product_wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    modules = [n for n in names if n.endswith(".py")]
    assert "assyncy_dagster/definitions.py" in modules and "assyncy_dagster/etc/dagster.yaml" in names
    assert [m for m in modules if any(part in Path(m).with_suffix("").parts for part in STAND_IN_PARTS)] == []
    assert {
        f"assyncy_dagster/etc/{p.relative_to(REPO / 'etc')}" for p in (REPO / "etc").rglob("*") if p.is_file()
    } <= names
    assert any(
        line.startswith("Requires-Dist: assyncy-dagster-demo") and 'extra == "demo"' in line
        for line in metadata.splitlines()
    )
    with zipfile.ZipFile(demo_wheel) as archive:
        demo_names = set(archive.namelist())
        entry_points = archive.read(next(n for n in demo_names if n.endswith("entry_points.txt"))).decode()
    assert {
        "assyncy_dagster_demo/demo.py",
        "assyncy_dagster_demo/portal_sim/simulator.py",
        "assyncy_dagster_demo/testing/sshd.py",
        "assyncy_dagster_demo/testing/session_log.py",  # run by path as the sshd's forced command
        "assyncy_dagster_demo/testing/smtp_sink.py",
    } <= demo_names
    assert "[assyncy_dagster.commands]" in entry_points

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "ASSYNCY_CONFIG", "PYTHONPATH")}

    _install(venv, product_wheel)
    alone = _demo_once(venv, empty, env, timeout=60)
    assert alone.returncode == 2, alone.stderr
    assert "the demo is not installed: pip install 'assyncy-dagster[demo]'" in alone.stderr
    assert list(empty.iterdir()) == []

    _install(venv, product_wheel, demo_wheel)
    demo = _demo_once(venv, empty, env, timeout=300)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "transferred 12282a" in demo.stdout
    assert (empty / "demo" / "scratch" / "ny79" / "12282a" / "data").is_dir()
