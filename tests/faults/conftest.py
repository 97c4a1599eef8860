"""The fault suite's figures, repeated at the end of the run (also under xdist).

Fixtures come from tests/conftest.py, which applies here too."""

import os
import tempfile
from pathlib import Path

_ENV = "ASSYNCY_FAULT_FIGURES"


def pytest_configure(config):
    # Set in the controller before xdist starts its workers, so they inherit it.
    if not os.environ.get(_ENV) and not hasattr(config, "workerinput"):
        fd, path = tempfile.mkstemp(prefix="assyncy-fault-figures-", suffix=".txt")
        os.close(fd)
        os.environ[_ENV] = path
        config._assyncy_fault_figures = path


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    path = getattr(config, "_assyncy_fault_figures", None)
    if not path:
        return
    lines = Path(path).read_text().splitlines() if Path(path).exists() else []
    if lines:
        terminalreporter.section("fault figures")
        for line in lines:
            terminalreporter.write_line(line)
    Path(path).unlink(missing_ok=True)
    os.environ.pop(_ENV, None)
