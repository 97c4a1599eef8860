"""The wheel carries etc/, the stand-ins and the demo extra, so that `pip install 'assyncy-dagster[demo]'`
then `assyncy demo` works outside a checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.support.helpers import REPO


@pytest.mark.slow
def test_the_wheel_carries_etc_the_stand_ins_and_the_demo_extra(tmp_path):
    source = tmp_path / "source"
    # A copy, so that building leaves nothing in the checkout (build/, *.egg-info) that other runs share.
    shutil.copytree(
        REPO / "assyncy_dagster",
        source / "assyncy_dagster",
        symlinks=True,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copytree(REPO / "etc", source / "etc")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "wheel"), str(source)],
        check=True,
        timeout=180,
    )

    (wheel,) = (tmp_path / "wheel").glob("assyncy_dagster-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    etc_files = {f"assyncy_dagster/etc/{p.relative_to(REPO / 'etc')}" for p in (REPO / "etc").rglob("*") if p.is_file()}
    assert {
        "assyncy_dagster/etc/dagster.yaml",
        "assyncy_dagster/etc/demo-visits.yml",
        "assyncy_dagster/etc/epnalert-text.j2",
        "assyncy_dagster/etc/epnalert-html.j2",
    } <= etc_files
    assert etc_files <= names
    assert {
        "assyncy_dagster/demo.py",
        "assyncy_dagster/portal_sim.py",
        "assyncy_dagster/etc_files.py",
        "assyncy_dagster/testing/sshd.py",
        "assyncy_dagster/testing/smtp_sink.py",
        "assyncy_dagster/testing/stack.py",
    } <= names
    assert "Provides-Extra: demo" in metadata
    assert any(
        line.startswith("Requires-Dist: aiosmtpd") and 'extra == "demo"' in line for line in metadata.splitlines()
    )
