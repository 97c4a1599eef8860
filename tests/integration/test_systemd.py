"""The unit files as systemd itself reads them (systemd-analyze verify)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.support.helpers import BIN, INSTALL_BIN, UNITS, exec_start

# Where this test's interpreter keeps the console scripts a `pip install` puts in /opt/assyncy/bin.


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify_accepts_the_unit(path, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    program = exec_start(path)[0][len(INSTALL_BIN) :]
    if not (BIN / program).exists():
        pytest.skip(f"{program} is not installed here")
    # verify insists that ExecStart exists: point it at this environment's copy of the same program.
    copy = tmp_path / path.name
    copy.write_text(path.read_text().replace(INSTALL_BIN, f"{BIN}/"))
    for other in UNITS:  # Conflicts= names the other units; let verify find them beside this one
        if other != path:
            (tmp_path / other.name).write_text(other.read_text().replace(INSTALL_BIN, f"{BIN}/"))
    done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    # verify exits 0 even for an unknown key, so its warnings about this file count as failures too.
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if path.name in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr
