"""The unit tier starts nothing: a unit test that starts a process (subprocess, fork, exec,
spawn) or opens a network connection or a listening socket fails, naming what it tried.

An audit hook (PEP 578) sees every such attempt, also from inside Dagster or a library.
It is armed only while a test of this folder runs (setup, call and teardown), so the other
tiers, collected into the same process by `pytest tests` or xdist, are not affected.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# What "starting something" means here: the audit events of every way Python starts a process
# or talks over a socket (a connection, or a bound socket that would be a server).
STARTS = {
    "subprocess.Popen",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.forkpty",
    "pty.spawn",
    "socket.bind",
    "socket.connect",
    "socket.connect_ex",
}
_armed: list[str] = []  # the id of the unit test running now, if any
UNIT = Path(__file__).parent


class StartedSomething(AssertionError):
    """A unit test started a process or used a socket: it belongs in tests/integration/."""


def _refuse(event: str, args: tuple) -> None:
    if _armed and event in STARTS:
        what = f"{event}{args[:2]!r}" if not event.startswith("socket.") else f"{event} to {args[1]!r}"
        raise StartedSomething(
            f"{_armed[0]}: a unit test may not start anything, but it tried {what}; move it to tests/integration/"
        )


sys.addaudithook(_refuse)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    # Called for every test of the session, whichever folder it is in: arm for this folder's only.
    if item.path.is_relative_to(UNIT):
        _armed.append(item.nodeid)
    try:
        yield
    finally:
        _armed.clear()
