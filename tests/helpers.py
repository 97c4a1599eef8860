"""Small helpers shared by the tests."""

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psutil

from assyncy_dagster.definitions import build_definitions, build_resources
from assyncy_dagster.transfer import SshEndpoint


def wait_for(predicate, timeout: float, what: str, *, proc: subprocess.Popen | None = None,
             log: Path | None = None) -> None:
    """Poll `predicate` until it is true; fail naming `what` after `timeout` seconds, or as
    soon as `proc` (a server the wait depends on) has exited, with the tail of its `log`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    tail = f"\n--- {log.name} ---\n{log.read_text()[-4000:]}" if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}{tail}")


@contextlib.contextmanager
def running(argv: list[str], **popen_kwargs) -> Iterator[subprocess.Popen]:
    """A command in its own process group, killed with its children if the test leaves it running."""
    proc = subprocess.Popen(argv, start_new_session=True, **popen_kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def transfer_started(destination: Path) -> bool:
    """Whether rsync has written any bytes under `destination` (final or partial files)."""
    return destination.exists() and any(p.is_file() for p in destination.rglob("*"))


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


def ticker(stack):
    """Evaluate epn_sensor as the daemon does, carrying its cursor from tick to tick;
    returns (tick, state) with the cursor in state["cursor"]."""
    state = {"cursor": None}

    def tick():
        defs = build_definitions(str(stack.config_path))
        sensor = defs.get_sensor_def("epn_sensor")
        resources = build_resources()
        with dg.build_sensor_context(instance=stack.instance, resources=resources, cursor=state["cursor"]) as context:
            result = sensor(context)
            state["cursor"] = result.cursor if isinstance(result, dg.SensorResult) else context.cursor
        if isinstance(result, dg.SensorResult):
            for request in result.dynamic_partitions_requests or []:
                stack.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        return result

    return tick, state


def endpoint(**overrides: object) -> SshEndpoint:
    """An endpoint as config.yml would describe the facility's, with `overrides` applied."""
    values: dict[str, object] = dict(
        host="sftp.synchrotron.org.au",
        port=2222,
        user="help@massive.org.au",
        key_file=Path("/etc/assyncy/id_ed25519"),
        known_hosts_file=Path("/etc/assyncy/known_hosts"),
        source_root="/data/mx",
    )
    values.update(overrides)
    return SshEndpoint(**values)  # type: ignore[arg-type]
