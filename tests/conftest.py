"""Fixtures for the real servers the tests talk to, and the "fault figures" section.

Each server fixture lives in its own `fixtures_*.py` module beside this file.
"""

import logging
import os
import tempfile
from pathlib import Path

import pytest
from fixtures_portal import *  # noqa: F401,F403
from fixtures_postgres import *  # noqa: F401,F403
from fixtures_redis import *  # noqa: F401,F403
from fixtures_smtp import *  # noqa: F401,F403
from fixtures_sshd import *  # noqa: F401,F403
from fixtures_stack import *  # noqa: F401,F403


@pytest.fixture(autouse=True)
def _fresh_assyncy_loggers():
    """Each test starts with the `assyncy` loggers as a new process has them:
    log set-up done by one test (levels, file handlers, masks) must not leak into another."""

    def reset() -> None:
        for name in list(logging.root.manager.loggerDict):
            if name == "assyncy" or name.startswith(("assyncy.", "assyncy_dagster")):
                logger = logging.getLogger(name)
                for handler in list(logger.handlers):
                    logger.removeHandler(handler)
                    handler.close()
                logger.filters.clear()
                logger.setLevel(logging.NOTSET)
                logger.propagate = True

    reset()
    yield
    reset()


# -- the figures the fault suite (tests/faults/faultkit.figure) and the scale-out tests print ----
# Here, not in tests/faults/conftest.py: under xdist only this conftest is loaded by the
# controller, which prints the summary; the workers inherit the file's name.
_FIGURES_ENV = "ASSYNCY_FAULT_FIGURES"


def pytest_configure(config):
    # Set in the controller before xdist starts its workers, so they inherit it.
    if not os.environ.get(_FIGURES_ENV) and not hasattr(config, "workerinput"):
        fd, path = tempfile.mkstemp(prefix="assyncy-fault-figures-", suffix=".txt")
        os.close(fd)
        os.environ[_FIGURES_ENV] = path
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
    os.environ.pop(_FIGURES_ENV, None)
