"""`make demo`: one cycle, then (without --once) the Dagster UI with the stand-ins up, the
sensor bringing home the visit that ends after the start, and Ctrl-C stopping everything."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from tests.support.helpers import BIN, running, wait_for


def found(log: Path, pattern: str) -> re.Match | None:
    return re.search(pattern, log.read_text()) if log.exists() else None


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A folder for the demo's `demo/`, which the demo's SFTP account can reach (tmp_path's parents are private)."""
    path = Path(tempfile.mkdtemp(prefix="assyncy-demo-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_demo_keeps_the_ui_up_until_ctrl_c_and_leaves_no_process_behind(workdir):
    argv = [str(BIN / "assyncy"), "demo", "--port", "0", "--live-visit-seconds", "15"]
    log = workdir / "console.log"
    with open(log, "w") as console, running(argv, cwd=workdir, stdout=console, stderr=subprocess.STDOUT) as demo:
        ui = r"Dagster UI: (http://127\.0\.0\.1:\d+)"
        wait_for(lambda: found(log, ui), 180, "the UI's URL", proc=demo, log=log)
        url = found(log, ui).group(1)
        assert requests.get(url, timeout=10).status_code == 200
        # Its visit was on during the first cycle and ends after it: the sensor, ticking in dagster
        # dev with the stand-ins still up, brings it home.
        assert found(log, r"held back 13001c: visit still running")
        wait_for(lambda: found(log, r"13001c is home: 8 files"), 90, "13001c to come home", proc=demo, log=log)
        children = psutil.Process(demo.pid).children(recursive=True)
        assert any("dagster" in " ".join(c.cmdline()) for c in children)

        os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the demo's process group
        assert demo.wait(timeout=60) == 0, log.read_text()

    text = log.read_text()
    assert "stopped." in text
    for dagster_noise in (" - DEBUG - ", "BetaWarning", "PreviewWarning"):
        assert dagster_noise not in text, "the console shows the demo's and assyncy's lines only"
    left = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not left, [" ".join(c.cmdline()) for c in left]
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=5)
    assert (workdir / "demo" / "scratch" / "ab12" / "13001c" / "data" / "frames" / "img_0006.cbf").is_file()
