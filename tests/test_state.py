"""ignore.yml and alerted.yml: atomic, locked, seed-shaped."""

import multiprocessing
import os

import yaml

from assyncy_dagster.state import IGNORE_KEY, add_epns, read_epns


def _append_many(path, prefix, count):
    for i in range(count):
        add_epns(path, [f"{prefix}{i}a"])


def test_missing_file_reads_as_empty(tmp_path):
    assert read_epns(tmp_path / "ignore.yml") == set()


def test_entries_are_kept_sorted_in_the_seed_shape(tmp_path):
    path = tmp_path / "ignore.yml"
    path.write_text("---\ncomment: kept by hand\npreviouslySynched:\n- 12282b\n")
    assert add_epns(path, ["900a", "12282a", "12282b"]) == ["900a", "12282a"]
    data = yaml.safe_load(path.read_text())
    assert data == {"comment": "kept by hand", IGNORE_KEY: ["900a", "12282a", "12282b"]}


def test_a_symlinked_state_file_is_updated_through_its_link(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    target = shared / "ignore.yml"
    target.write_text("---\npreviouslySynched:\n- 12282a\n")
    link = tmp_path / "ignore.yml"
    link.symlink_to(target)
    assert add_epns(link, ["12282b"]) == ["12282b"]
    assert link.is_symlink(), "the admin's link must stay a link"
    assert yaml.safe_load(target.read_text())[IGNORE_KEY] == ["12282a", "12282b"]
    assert read_epns(link) == {"12282a", "12282b"}


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
        import assyncy_dagster.state as state

        def die(*args):
            os._exit(9)

        state.os.replace = die
        add_epns(path, ["3a"])

    proc = multiprocessing.get_context("fork").Process(target=crash_while_writing)
    proc.start()
    proc.join(30)
    assert proc.exitcode == 9
    assert path.read_text() == before
    assert add_epns(path, ["3a"]) == ["3a"]  # the lock died with the writer
    assert read_epns(path) == {"1a", "2a", "3a"}
