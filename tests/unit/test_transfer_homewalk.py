"""The walk of home begun before a transfer (transfer/homewalk.py) is home as it is once the
transfer is done: whatever changed in between, its tree equals a full walk made afterwards
(manifests.local_tree), on a real folder with the kernel's real notices (inotify)."""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from assyncy_dagster.transfer.homewalk import HomeWalk
from assyncy_dagster.transfer.manifests import local_tree


def lay_out(home: Path, folders: int = 3, files: int = 4) -> None:
    for f in range(folders):
        for i in range(files):
            path = home / f"run_{f}" / f"img_{i}.cbf"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * (100 + i))
            os.utime(path, (1_700_000_000 + i, 1_700_000_000 + i))
    (home / "run_0" / "deep" / "deeper").mkdir(parents=True)
    (home / "run_0" / "deep" / "deeper" / "frame.h5").write_bytes(b"y" * 10)
    (home / "latest").symlink_to("run_1")
    # Folders as old as their files: a change inside one moves its mtime to now, whatever the clock says.
    for folder in [home, *(p for p in home.rglob("*") if p.is_dir() and not p.is_symlink())]:
        os.utime(folder, (1_700_000_000, 1_700_000_000))


def written_like_rsync(path: Path, data: bytes, mtime: int) -> None:
    """A file as rsync writes it: a hidden temporary file, then renamed over the name."""
    temporary = path.parent / f".{path.name}.XyZ123"
    temporary.write_bytes(data)
    os.utime(temporary, (mtime, mtime))
    temporary.rename(path)


CHANGES: dict[str, Callable[[Path], None]] = {
    "nothing": lambda home: None,
    "a file written like rsync writes it": lambda home: written_like_rsync(
        home / "run_1" / "img_2.cbf", b"new content", 1_800_000_000
    ),
    "a new file in a deep folder": lambda home: written_like_rsync(
        home / "run_0" / "deep" / "deeper" / "more.h5", b"z" * 7, 1_800_000_000
    ),
    "a file grown in place": lambda home: (home / "run_2" / "img_0.cbf").open("ab").write(b"more"),
    "a file cut short in place": lambda home: os.truncate(home / "run_2" / "img_1.cbf", 3),
    "a file's mtime set back": lambda home: os.utime(home / "run_0" / "img_3.cbf", (5, 5)),
    "a file's mode changed": lambda home: os.chmod(home / "run_0" / "img_1.cbf", 0o600),
    "a folder's mtime set": lambda home: os.utime(home / "run_0" / "deep", (7, 7)),
    "a file removed": lambda home: (home / "run_1" / "img_0.cbf").unlink(),
    "a new folder with files": lambda home: (
        (home / "run_9" / "sub").mkdir(parents=True),
        (home / "run_9" / "sub" / "a.cbf").write_bytes(b"a"),
        (home / "run_9" / "b.cbf").write_bytes(b"bb"),
    ),
    "a folder removed": lambda home: shutil.rmtree(home / "run_0" / "deep"),
    "a folder moved away": lambda home: (home / "run_2").rename(home / "run_2_moved"),
    "a symlink pointed elsewhere": lambda home: (
        (home / "latest").unlink(),
        (home / "latest").symlink_to("run_2"),
    ),
    "a hidden partial file only": lambda home: (home / "run_1" / ".rsync-partial").mkdir(),
    ".info written": lambda home: (home / "run_1" / ".info").write_text("beamline notes"),
}


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
def test_the_walk_made_before_is_home_as_it_is_after_the_change(tmp_path, change):
    home = tmp_path / "data"
    lay_out(home)
    with HomeWalk(home) as walk:
        walk.begin()
        CHANGES[change](home)
        assert walk.tree() == local_tree(home)


def test_a_no_op_lists_nothing_again_and_a_change_only_its_folder_and_the_one_holding_it(tmp_path):
    home = tmp_path / "data"
    lay_out(home, folders=20)
    with HomeWalk(home) as walk:
        walk.begin()
        assert walk.tree() == local_tree(home) and walk.relisted == 0
    with HomeWalk(home) as walk:
        walk.begin()
        written_like_rsync(home / "run_7" / "img_1.cbf", b"changed", 1_800_000_000)
        assert walk.tree() == local_tree(home) and walk.relisted == 2  # run_7/, and home for run_7's mtime


def test_without_a_walk_before_or_a_folder_to_watch_the_tree_is_a_full_walk_after(tmp_path):
    home = tmp_path / "data"
    with HomeWalk(home) as walk:  # a first copy: home is not there when the transfer begins
        walk.begin()
        lay_out(home)
        assert walk.tree() == local_tree(home) and walk.relisted == -1
    with HomeWalk(home) as walk:  # begin never called (a dry-run, a caller that had no time)
        assert walk.tree() == local_tree(home) and walk.relisted == -1


def test_many_random_changes_end_as_a_full_walk_says(tmp_path):
    """Creations, rewrites, removals, renames, hidden files and attribute changes at random, as a
    transfer and a user at home might make them at once; each time the walk equals a full walk."""
    chooser = random.Random(19)
    for round_ in range(40):
        home = tmp_path / f"round_{round_}" / "data"
        lay_out(home, folders=4, files=5)
        with HomeWalk(home) as walk:
            walk.begin()
            for _ in range(chooser.randint(1, 6)):
                files = sorted(p for p in home.rglob("*") if p.is_file() and not p.is_symlink())
                folders = sorted(p for p in home.rglob("*") if p.is_dir() and not p.is_symlink())
                target = chooser.choice(files) if files else None
                action = chooser.choice(["write", "append", "utime", "unlink", "new", "mkdir", "rename", "hidden"])
                if target is None or action == "new":
                    written_like_rsync(chooser.choice([*folders, home]) / f"n{chooser.random()}", b"n", 9)
                elif action == "write":
                    written_like_rsync(target, b"w" * chooser.randint(0, 50), chooser.randint(1, 10**9))
                elif action == "append":
                    with target.open("ab") as fh:
                        fh.write(b"a")
                elif action == "utime":
                    os.utime(target, (3, chooser.randint(1, 10**9)))
                elif action == "unlink":
                    target.unlink()
                elif action == "hidden":  # rsync's temporary file, left behind
                    (chooser.choice([*folders, home]) / f".tmp{chooser.random()}").write_bytes(b"h")
                elif action == "mkdir":
                    (chooser.choice([*folders, home]) / f"d{chooser.random()}").mkdir()
                else:
                    target.rename(chooser.choice([*folders, home]) / f"r{chooser.random()}")
            assert walk.tree() == local_tree(home), f"round {round_}"


# -- a first copy: home is not there before rsync; its folders are listed as rsync moves on -------


def folders_of(home: Path) -> list[str]:
    """Every folder of home as a prefix ("run_0/", "run_0/deep/"), in the order rsync makes them."""
    return sorted(f"{p.relative_to(home)}/" for p in home.rglob("*") if p.is_dir() and not p.is_symlink())


def listed_as_rsync_goes(home: Path) -> HomeWalk:
    """A HomeWalk of a first copy: `begin` finds no home, then rsync lays it out and each of its
    folders is listed once rsync has moved on from it."""
    walk = HomeWalk(home)
    walk.begin()
    lay_out(home)
    for prefix in folders_of(home):
        walk.list_done(prefix)
    return walk


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
def test_a_first_copy_listed_as_rsync_goes_is_home_as_it_is_after_the_change(tmp_path, change):
    home = tmp_path / "data"
    with listed_as_rsync_goes(home) as walk:
        CHANGES[change](home)
        assert walk.tree() == local_tree(home)


def test_a_first_copy_listed_as_rsync_goes_lists_only_the_top_again(tmp_path):
    home = tmp_path / "data"
    with listed_as_rsync_goes(home) as walk:
        assert walk.tree() == local_tree(home) and walk.relisted == 1


def test_a_folder_listed_through_a_symlink_put_where_a_folder_was_is_not_home(tmp_path):
    """`list_done` is told of a folder reached through a symlink at home (rsync made none, a user
    did): the kernel follows it, but the tree after rsync holds the symlink, never what is behind it."""
    home, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    (elsewhere / "sub").mkdir(parents=True)
    (elsewhere / "sub" / "frame.h5").write_bytes(b"not home")
    with HomeWalk(home) as walk:
        walk.begin()
        lay_out(home)
        (home / "run_1" / "linked").symlink_to(elsewhere)
        for prefix in [*folders_of(home), "run_1/linked/sub/"]:
            walk.list_done(prefix)
        tree = walk.tree()
    assert tree == local_tree(home) and "run_1/linked/sub/frame.h5" not in tree


def test_a_first_copy_with_random_changes_as_it_goes_ends_as_a_full_walk_says(tmp_path):
    """Folders listed while others are still being written, then changed at random, as a
    transfer and a user at home might; each time the walk equals a full walk after."""
    chooser = random.Random(20)
    for round_ in range(40):
        home = tmp_path / f"round_{round_}" / "data"
        with HomeWalk(home) as walk:
            walk.begin()
            lay_out(home, folders=4, files=5)
            prefixes = folders_of(home)
            for prefix in chooser.sample(prefixes, chooser.randint(0, len(prefixes))):
                walk.list_done(prefix)
                if chooser.random() < 0.5:
                    folders = sorted(p for p in home.rglob("*") if p.is_dir() and not p.is_symlink())
                    files = sorted(p for p in home.rglob("*") if p.is_file() and not p.is_symlink())
                    action = chooser.choice(["write", "unlink", "new", "mkdir", "rename", "hidden"])
                    if action == "write" and files:
                        written_like_rsync(chooser.choice(files), b"w" * chooser.randint(0, 50), 9)
                    elif action == "unlink" and files:
                        chooser.choice(files).unlink()
                    elif action == "new":
                        written_like_rsync(chooser.choice([*folders, home]) / f"n{chooser.random()}", b"n", 9)
                    elif action == "mkdir":
                        (chooser.choice([*folders, home]) / f"d{chooser.random()}").mkdir()
                    elif action == "rename" and folders:
                        chooser.choice(folders).rename(home / f"r{chooser.random()}")
                    elif action == "hidden":
                        (chooser.choice([*folders, home]) / f".tmp{chooser.random()}").write_bytes(b"h")
            assert walk.tree() == local_tree(home), f"round {round_}"
