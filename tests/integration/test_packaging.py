"""What ships, seen from a fresh interpreter: the production code imports no stand-in (portal simulator,
test servers, demo) and nothing only the demo extra installs."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import assyncy_dagster

STAND_INS = ("assyncy_dagster_demo", "aiosmtpd")  # the stand-ins' distribution and what only it needs


def test_production_modules_import_no_stand_in_and_no_demo_dependency():
    production = [m.name for m in pkgutil.walk_packages(assyncy_dagster.__path__, "assyncy_dagster.")]
    assert "assyncy_dagster.definitions" in production and "assyncy_dagster.cli" in production

    # A fresh interpreter: this one has imported the stand-ins for other tests.
    code = "import importlib, sys\nfor name in sys.argv[1:]: importlib.import_module(name)\nprint(*sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code, *production], capture_output=True, text=True, timeout=120, check=False
    )

    assert done.returncode == 0, done.stderr
    loaded = done.stdout.split()
    assert [m for m in loaded if m.split(".")[0] in STAND_INS] == []


def test_loading_the_code_location_does_not_load_pandas_or_matplotlib():
    """Every run worker, CLI call and code server loads the definitions: the report's plotting
    libraries are loaded only when a report is built."""
    code = "import sys, assyncy_dagster.definitions\nprint(*sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)

    assert done.returncode == 0, done.stderr
    assert [m for m in done.stdout.split() if m.split(".")[0] in ("pandas", "matplotlib")] == []
