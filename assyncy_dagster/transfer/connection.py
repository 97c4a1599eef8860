"""One ssh connection for a run's transfers (OpenSSH connection sharing).

Each rsync of a batch would otherwise make its own ssh connection: TCP and SSH
handshakes, key exchange and public-key authentication, most of what a small
EPN costs (over loopback here: 0.29 s per 1 MB EPN with a connection each,
0.07 s over a shared one). The old tool made one per EPN, and nothing in a
transfer needs its own: each rsync still runs in a session of its own on the
host (its own forced command, e.g. rrsync), and the host sees the same commands.

`shared_connection` starts the master, `ssh -N` with `ControlMaster=yes`, as a
child of the step: in a session of its own (a stop of rsync's process group
leaves it alone), its control socket in a private folder (mkdtemp: 0700), and
stopped when the context ends, however the step ends; if the step's process
is killed outright, its parent-death signal stops it (as rsync's does,
process.py), and the process's watch (stepwatch.py) ends it as it ends an
rsync (also after a stop of the step past the limit: SIGKILL after the grace)
and then removes the folder. The transfers reach it with `ControlMaster=no`:
until the master is up, or if it is gone, each ssh connects on its own, so
sharing never adds a way to fail. Killing an rsync's group kills its ssh (a
client of the master), and the master then closes that session on the host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .endpoint import SshEndpoint
from .errors import SshConfigError, redact
from .process import _die_with_parent, private_folder, watched_group

SOCKET_NAME = "master"
STOP_SECONDS = 5.0
# How long the first transfer waits for the master to be up before it connects on its own.
MASTER_UP_SECONDS = 10.0

log = logging.getLogger("assyncy.rsync")


@contextlib.contextmanager
def shared_connection(endpoint: SshEndpoint, logger: logging.Logger | Any | None = None) -> Iterator[SshEndpoint]:
    """`endpoint` with its transfers sharing one ssh connection while the context lasts (the
    same endpoint if ssh or a private folder cannot be had); the master is stopped at the end."""
    logger = logger or log
    if shutil.which("ssh") is None:
        yield endpoint
        return
    with private_folder("assyncy-ssh-") as folder:
        socket_path = folder / SOCKET_NAME
        try:
            argv = endpoint.master_command(socket_path)
            shared = dataclasses.replace(endpoint, control_path=socket_path)
        except SshConfigError as exc:  # TMPDIR holds a character ssh would misread
            logger.info(f"assyncy: no shared ssh connection ({exc}); each transfer connects on its own")
            yield endpoint
            return
        with open(folder / "master.log", "wb") as errors:
            master = subprocess.Popen(
                _die_with_parent(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                start_new_session=True,
            )
        with watched_group(master.pid):  # its own session: its group is its pid
            try:
                _wait_until_up(master, socket_path)
                yield shared
            finally:
                ended_early = master.poll()
                _stop(master)
                if ended_early is not None:  # refused or cut off: the transfers after it connected on their own
                    said = redact((folder / "master.log").read_text(errors="replace").splitlines()[-3:])
                    logger.info(
                        f"assyncy: the shared ssh connection ended early (status {ended_early}: "
                        f"{' '.join(said) or 'no message'}); the transfers after it connected on their own"
                    )


def _wait_until_up(master: subprocess.Popen[bytes], socket_path: Path, limit: float = MASTER_UP_SECONDS) -> None:
    """Until the master listens (its socket appears once it has authenticated), has ended, or
    `limit` has passed. A transfer started before would make its own handshake beside the
    master's, on the same cores, and a one-EPN run would pay for two handshakes instead of one."""
    deadline = time.monotonic() + limit
    while not socket_path.exists() and master.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)


def _stop(master: subprocess.Popen[bytes]) -> None:
    """SIGTERM the master (it closes the connection and removes its socket), SIGKILL after STOP_SECONDS."""
    if master.poll() is not None:
        return
    master.terminate()
    try:
        master.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        master.kill()
        master.wait()
    except BaseException:
        master.kill()
        master.wait()
        raise
