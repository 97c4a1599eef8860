"""ignore.yml under concurrent writer processes and a writer killed mid-update."""

import multiprocessing
import os

from assyncy_dagster.state import add_epns, read_epns


def _append_many(path, prefix, count):
    for i in range(count):
        add_epns(path, [f"{prefix}{i}a"])


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "ignore.yml"
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_append_many, args=(path, p, 40)) for p in (1, 2, 3, 4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    assert read_epns(path) == {f"{p}{i}a" for p in (1, 2, 3, 4) for i in range(40)}
    leftovers = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert leftovers == []


def test_a_writer_killed_mid_update_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "ignore.yml"
    add_epns(path, ["1a", "2a"])
    before = path.read_text()

    def crash_while_writing():
        # Die inside the critical section, after the temp file is written but
        # before the rename, as a power cut would.
        import assyncy_dagster.statefiles as statefiles

        def die(*args):
            os._exit(9)

        statefiles.os.replace = die
        add_epns(path, ["3a"])

    proc = multiprocessing.get_context("fork").Process(target=crash_while_writing)
    proc.start()
    proc.join(30)
    assert proc.exitcode == 9
    assert path.read_text() == before
    assert add_epns(path, ["3a"]) == ["3a"]  # the lock died with the writer
    assert read_epns(path) == {"1a", "2a", "3a"}
