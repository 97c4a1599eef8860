"""What ships: the production code never imports the stand-ins (portal simulator, test servers, demo)
nor what only the demo extra installs, and the package reads etc/ through one path."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import assyncy_dagster
from assyncy_dagster.cli import main
from assyncy_dagster.etc_files import etc_path

# The checkout the package is installed from (editable).
SOURCE = Path(assyncy_dagster.__file__).resolve().parent.parent
STAND_INS = ("assyncy_dagster.testing", "assyncy_dagster.portal_sim", "assyncy_dagster.demo")


def test_production_modules_import_no_stand_in_and_no_demo_dependency():
    production = [
        m.name
        for m in pkgutil.walk_packages(assyncy_dagster.__path__, "assyncy_dagster.")
        if not m.name.startswith(STAND_INS)
    ]
    assert "assyncy_dagster.definitions" in production and "assyncy_dagster.cli" in production

    # A fresh interpreter: this one has imported the stand-ins for other tests.
    code = "import importlib, sys\nfor name in sys.argv[1:]: importlib.import_module(name)\nprint(*sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code, *production], capture_output=True, text=True, timeout=120, check=False
    )

    assert done.returncode == 0, done.stderr
    loaded = done.stdout.split()
    assert [m for m in loaded if m.startswith((*STAND_INS, "aiosmtpd"))] == []


def test_demo_without_the_demo_extra_says_what_to_install(monkeypatch, tmp_path, capsys):
    # As if the demo extra were not installed: None in sys.modules fails an import.
    for name in ["aiosmtpd", *(m for m in sys.modules if m.startswith("aiosmtpd."))]:
        monkeypatch.setitem(sys.modules, name, None)
    for name in ("assyncy_dagster.demo", "assyncy_dagster.testing.smtp_sink"):
        monkeypatch.delitem(sys.modules, name, raising=False)  # imported afresh, as in a new process
    monkeypatch.chdir(tmp_path)

    assert main(["demo", "--once"]) == 2
    assert "pip install 'assyncy-dagster[demo]'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_packages_etc_is_the_repositorys_etc():
    """One copy of each file: in a checkout, assyncy_dagster/etc is a symlink to etc/."""
    assert etc_path().resolve() == SOURCE / "etc"
    assert etc_path("demo-visits.yml").is_file()
