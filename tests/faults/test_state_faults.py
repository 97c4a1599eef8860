"""ignore.yml under 100 concurrent writer processes, writers SIGKILLed mid-write,
and a reader polling all the while: no entry lost, never a broken file."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
import yaml

from assyncy_dagster.state import IGNORE_KEY, StateFileError, add_epns, read_epns
from tests.support.faultkit import figure

pytestmark = pytest.mark.slow
WRITERS = 100
CTX = multiprocessing.get_context("fork")


def _one_update(path, epn, go):
    go.wait(30)
    add_epns(path, [epn])


def _looping_writer(path, prefix, done):
    """Adds EPNs one by one and reports each after add_epns returned (until killed)."""
    for i in range(100_000):
        epn = f"{prefix}{i}b"
        add_epns(path, [epn])
        done.put(epn)


def _stuck_in_the_middle(path, inside):
    """Writes the new file, then stops just before renaming it into place (holding the lock)."""
    from assyncy_dagster import state

    real_replace = state.os.replace

    def pause(src, dst):
        inside.set()
        time.sleep(60)
        real_replace(src, dst)

    state.os.replace = pause
    add_epns(path, ["99999z"])


def _reader(path, stop, counts):
    reads = broken = 0
    while not stop.is_set():
        try:
            text = Path(path).read_text(encoding="utf-8")
            data = yaml.safe_load(text)
            if not isinstance(data, dict) or not isinstance(data.get(IGNORE_KEY), list):
                broken += 1
            read_epns(path)
            reads += 1
        except FileNotFoundError:
            pass
        except (yaml.YAMLError, StateFileError):
            broken += 1
    counts.put((reads, broken))


def test_concurrent_and_killed_writers_lose_nothing_and_never_break_the_file(tmp_path):
    path = tmp_path / "ignore.yml"
    path.write_text("---\ncomment: kept by hand\npreviouslySynched:\n- 1a\n")
    rng = random.Random(7)
    started = time.monotonic()
    stop, counts, done, go = CTX.Event(), CTX.Queue(), CTX.Queue(), CTX.Event()
    reader = CTX.Process(target=_reader, args=(path, stop, counts))
    reader.start()

    # Writers killed at random moments while they loop over updates.
    loopers = [CTX.Process(target=_looping_writer, args=(path, 500 + n, done)) for n in range(3)]
    for p in loopers:
        p.start()
    # One killed for sure inside its critical section: temp file written, lock held, not yet renamed.
    inside = CTX.Event()
    stuck = CTX.Process(target=_stuck_in_the_middle, args=(path, inside))
    stuck.start()
    assert inside.wait(30)
    os.kill(stuck.pid, signal.SIGKILL)
    stuck.join(10)

    writers = [CTX.Process(target=_one_update, args=(path, f"{1000 + i}a", go)) for i in range(WRITERS)]
    for p in writers:
        p.start()
    go.set()  # all at once
    for p in loopers:
        time.sleep(rng.uniform(0.05, 0.3))
        os.kill(p.pid, signal.SIGKILL)
    for p in writers:
        p.join(60)
    for p in loopers:
        p.join(10)
    stop.set()
    reads, broken = counts.get(timeout=30)
    reader.join(10)

    confirmed = []
    while not done.empty():
        confirmed.append(done.get())
    final = read_epns(path)
    expected = {"1a"} | {f"{1000 + i}a" for i in range(WRITERS)} | set(confirmed)
    lost = sorted(expected - final)
    exit_codes = [p.exitcode for p in writers]
    leftovers = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    figure(
        f"state faults: {WRITERS} concurrent writer processes + 3 writers SIGKILLed at random "
        f"({len(confirmed)} of their updates confirmed) + 1 SIGKILLed holding the lock mid-write; "
        f"{len(lost)} lost entries, {broken} broken reads of {reads}; {len(leftovers)} orphaned temp file(s); "
        f"{time.monotonic() - started:.1f} s"
    )
    assert exit_codes == [0] * WRITERS
    assert [p.exitcode for p in loopers] == [-signal.SIGKILL] * 3
    assert stuck.exitcode == -signal.SIGKILL
    assert lost == []
    assert "99999z" not in final, "a write that never completed must not appear"
    assert broken == 0 and reads > 0
    assert yaml.safe_load(path.read_text())["comment"] == "kept by hand"
    assert add_epns(path, ["2a"]) == ["2a"], "the lock died with its holders"
