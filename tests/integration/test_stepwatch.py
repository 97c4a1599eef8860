"""The process's watch (transfer/stepwatch.py) once the process that started it is gone (killed
outright: no `finally` of its ran): the groups it was told of are ended, SIGKILL after the grace
for one that ignores SIGTERM, and the private folders it was told of are removed (a shared
connection's: a socket and its log), and nothing beyond them: not a folder taken back, not a
folder inside, not through a symlink."""

import os
import signal
import socket
import subprocess
import sys

from assyncy_dagster.transfer import stepwatch

GRACE_SECONDS = 0.5


def start_watch() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-I", "-S", stepwatch.__file__, "10", f"{GRACE_SECONDS}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )


def test_a_group_deaf_to_sigterm_is_killed_after_the_grace_once_its_process_is_gone():
    deaf = subprocess.Popen(["sh", "-c", 'trap "" TERM; while :; do sleep 0.1; done'], start_new_session=True)
    try:
        watch = start_watch()
        watch.stdin.write(f"+{deaf.pid}\n".encode())
        watch.stdout.close()  # the process gone: nobody reads what the watch says (EPIPE)
        watch.stdin.close()
        assert watch.wait(timeout=10) == 0
        assert deaf.wait(timeout=5) == -signal.SIGKILL
    finally:
        if deaf.poll() is None:
            os.killpg(deaf.pid, signal.SIGKILL)
            deaf.wait()


def test_the_folders_named_to_the_watch_are_removed_once_its_process_is_gone_and_nothing_else(tmp_path):
    named = tmp_path / "assyncy-ssh-named"
    named.mkdir()
    (named / "master.log").write_bytes(b"")
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(named / "master"))  # the control socket of a master killed with its step
    listening.close()
    forgotten = tmp_path / "forgotten"  # named, then taken back: its context ended and removed it
    forgotten.mkdir()
    (forgotten / "kept.txt").write_text("kept")
    holds_a_folder = tmp_path / "holds-a-folder"
    (holds_a_folder / "inner").mkdir(parents=True)
    (holds_a_folder / "inner" / "data.h5").write_text("data")
    target = tmp_path / "target"
    target.mkdir()
    (target / "data.h5").write_text("data")
    link = tmp_path / "link"
    link.symlink_to(target)

    watch = start_watch()
    told = [f">{os.fsencode(f).hex()}" for f in (named, forgotten, holds_a_folder, link)]
    watch.stdin.write(("\n".join([*told, f"<{os.fsencode(forgotten).hex()}"]) + "\n").encode())
    watch.stdout.close()
    watch.stdin.close()  # as when the process that started it is killed outright
    assert watch.wait(timeout=10) == 0

    assert not named.exists()
    assert (forgotten / "kept.txt").read_text() == "kept"
    assert (holds_a_folder / "inner" / "data.h5").read_text() == "data"
    assert link.is_symlink() and (target / "data.h5").read_text() == "data"
