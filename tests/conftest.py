"""Fixtures for the real servers the tests talk to.

Each server fixture lives in its own `fixtures_*.py` module beside this file.
"""

import logging

import pytest
from fixtures_portal import *  # noqa: F401,F403
from fixtures_postgres import *  # noqa: F401,F403
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
