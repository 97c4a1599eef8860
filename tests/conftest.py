"""What every test gets: the real servers' fixtures, fresh `assyncy` loggers, and the
"fault figures" section at the end of the run.

The fixtures live in tests/support/fixtures/, one module per server, registered here with
`pytest_plugins` (pytest reads it from this top-level conftest only). tests/ is a package,
so they import as `tests.support...` with the repository's root on sys.path, in xdist's
workers too.
"""

import logging
import os
import tempfile
from pathlib import Path

import pytest

from assyncy_dagster import logs

pytest_plugins = [
    "tests.support.fixtures.examples",
    "tests.support.fixtures.portal",
    "tests.support.fixtures.postgres",
    "tests.support.fixtures.redis",
    "tests.support.fixtures.smtp",
    "tests.support.fixtures.sshd",
    "tests.support.fixtures.stack",
]


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
        logs._direct_files.clear()  # the files configure_logging opened in this process

    reset()
    yield
    reset()


# -- the figures the fault suite and the scale-out tests print (tests/support/faultkit.figure) ----
# Here, in the top-level conftest: under xdist only this conftest is loaded by the
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


# -- the order the tests run in ----------------------------------------------------------------
# Longest first, handed out one at a time (`make test` passes `--maxschedchunk 1`): xdist's default
# deals each worker a run of consecutive tests at the start, which would give one worker every
# minute-long end-to-end test. One at a time, longest first, the short tests fill the gaps at the end.
_FIRST = (
    "tests/e2e/test_scale_out.py",
    "tests/faults/test_kill_loop.py",
    "tests/faults/test_epn_claims.py",
    "tests/faults/test_worker_liveness.py",
    "tests/faults/test_paused_worker.py",
    "tests/e2e/test_automatic.py",
    "tests/e2e/test_max_tasks.py",
    "tests/e2e/test_cli_failure_alert.py",
)
_TIERS = ("tests/e2e/", "tests/faults/", "tests/integration/", "tests/unit/")


def _rank(item: pytest.Item) -> tuple[int, int]:
    path = item.nodeid.split("::")[0]
    tier = next((i for i, prefix in enumerate(_TIERS) if path.startswith(prefix)), len(_TIERS))
    return (0 if path in _FIRST else 1, tier)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_rank)  # stable: within a rank, the files' own order
