"""The process's watch (transfer/stepwatch.py) removes, once the process that named them is gone,
the private folders it was told of (a shared connection's: a socket and its log), and nothing
beyond them: not a folder taken back, not a folder inside, not through a symlink."""

import os
import socket
import subprocess
import sys

from assyncy_dagster.transfer import stepwatch


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

    watch = subprocess.Popen(
        [sys.executable, "-I", "-S", stepwatch.__file__, "10", "5"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    told = [f">{os.fsencode(f).hex()}" for f in (named, forgotten, holds_a_folder, link)]
    watch.stdin.write(("\n".join([*told, f"<{os.fsencode(forgotten).hex()}"]) + "\n").encode())
    watch.stdin.close()  # as when the process that started it is killed outright
    assert watch.wait(timeout=10) == 0

    assert not named.exists()
    assert (forgotten / "kept.txt").read_text() == "kept"
    assert (holds_a_folder / "inner" / "data.h5").read_text() == "data"
    assert link.is_symlink() and (target / "data.h5").read_text() == "data"
