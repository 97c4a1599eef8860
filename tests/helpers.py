"""Small helpers shared by the end-to-end tests."""

import time

import psutil


def wait_for(predicate, timeout: float, what: str) -> None:
    """Poll `predicate` every 0.1 s until it is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def live_processes_mentioning(text: str) -> list[str]:
    """Command lines of live (non-zombie) processes that contain `text`, e.g. a test's destination."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            line = " ".join(proc.info["cmdline"] or [])
            if text in line and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(line)
        except psutil.NoSuchProcess:
            pass
    return found
