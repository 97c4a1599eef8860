"""The state files under crashes: ignore.yml under 100 concurrent writer processes, writers
SIGKILLed mid-write and a reader polling all the while (no entry lost, never a broken file);
every state file's writer SIGKILLed at random moments, a power cut's worth of times (always the
old or the new content, whole); and a corrupt copy of each JSON state file (moved aside with a
warning, never silently emptied)."""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
import random
import signal
import time
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from assyncy_dagster import canary
from assyncy_dagster.canary import REASONS_FILE, REPORTED_FILE
from assyncy_dagster.config import load_settings
from assyncy_dagster.due import DUE_FILE, read_due_since
from assyncy_dagster.facts import FACTS_FILE, Facts, read_saved_facts, save_facts
from assyncy_dagster.fixity import FINDINGS_FILE, Audit, read_findings, record_findings
from assyncy_dagster.portal.errors import PortalError
from assyncy_dagster.refresh_failures import REFRESH_FAILURE_FILE, record_refresh_failure
from assyncy_dagster.report_files import PNG_NAME
from assyncy_dagster.state import ALERTED_KEY, IGNORE_KEY, StateFileError, add_epns, read_epns
from assyncy_dagster.statefiles import write_atomically
from tests.support.faultkit import figure
from tests.support.helpers import NOW, sample_config

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
    from assyncy_dagster import statefiles

    real_replace = statefiles.os.replace

    def pause(src, dst):
        inside.set()
        time.sleep(60)
        real_replace(src, dst)

    statefiles.os.replace = pause
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


# -- a power cut in the middle of any state write ------------------------------------------
#
# A writer process loops over new versions of one state file, each through the module that
# owns it, and is SIGKILLed at a random moment (before, inside or after a write); then the
# file is read raw. A kill is what a crash does to the process; the fsyncs it cannot show
# (they matter to the disk, not to the page cache) are checked in tests/unit/test_statefiles.py.

SECONDS_PER_FILE = 2.5  # the kill loop's budget for each kind of state file
MIN_ROUNDS = 20
BASE = NOW.timestamp()
ON_HOST = [f"{20000 + n}a" for n in range(200)]  # bulk for the facts file
PAYLOAD = 1 << 20  # the report's PNG, 1 MiB: a write long enough to be cut in the middle


def _instance(folder: Path):
    """Just enough of an instance for the files of its storage folder."""
    return SimpleNamespace(storage_directory=lambda: str(folder))


def _window(version: int) -> list[str]:
    """The EPNs due at `version`: the last ten, so the files stay small."""
    return [f"{j}a" for j in range(max(0, version - 9), version + 1)]


def _write_version(kind: str, folder: Path, version: int) -> None:
    """Write `version` of `kind`'s file(s) the way production does."""
    stamp = NOW + timedelta(seconds=version)
    if kind in ("ignore.yml", "alerted.yml"):
        add_epns(folder / kind, [f"{version}a"], key=IGNORE_KEY if kind == "ignore.yml" else ALERTED_KEY)
    elif kind == "due clock and reasons":
        canary.record_due(_instance(folder), dict.fromkeys(_window(version), "requested"), stamp)
    elif kind == REFRESH_FAILURE_FILE:
        record_refresh_failure(
            folder / kind, "portal", PortalError(f"failure {version}"), stamp, _SETTINGS[0], since=BASE
        )
    elif kind == REPORTED_FILE:
        canary.mark_reported(_instance(folder), [f"{version}a"], date(2026, 1, 1) + timedelta(days=version))
    elif kind == FACTS_FILE:
        save_facts(folder / kind, Facts([], ON_HOST, float(version)))
    elif kind == PNG_NAME:
        write_atomically(folder / kind, _png(version))
    elif kind == FINDINGS_FILE:
        record_findings(folder / kind, "12282a", _DAMAGED, audited_at=BASE + version)
    else:
        raise AssertionError(kind)


_DAMAGED = Audit("xxh128", corrupt=["frames/img_0001.cbf"])  # what a fixity audit found


def _png(version: int) -> bytes:
    line = f"version {version:09d}\n".encode()
    return line * (PAYLOAD // len(line))


def _version_of(name: str, raw: bytes) -> int:
    """Which whole version `raw` is; raises when it is none (empty, partial, mixed)."""
    if name in ("ignore.yml", "alerted.yml"):
        entries = yaml.safe_load(raw.decode())[IGNORE_KEY if name == "ignore.yml" else ALERTED_KEY]
        assert entries == [f"{j}a" for j in range(len(entries))]
        return len(entries) - 1
    if name == PNG_NAME:
        version = int(raw[8:17])
        assert raw == _png(version)
        return version
    data = json.loads(raw.decode())
    if name == DUE_FILE:
        version = max(int(epn[:-1]) for epn in data)
        assert data == {epn: BASE + int(epn[:-1]) for epn in _window(version)}
    elif name == REASONS_FILE:
        version = max(int(epn[:-1]) for epn in data)
        assert data == dict.fromkeys(_window(version), "requested")
    elif name == REFRESH_FAILURE_FILE:
        version = round(data["last_failed_at"] - BASE)
        assert data["since"] == BASE and data["error"] == f"failure {version}"
    elif name == REPORTED_FILE:
        [(epn, day)] = data.items()
        version = int(epn[:-1])
        assert day == (date(2026, 1, 1) + timedelta(days=version)).isoformat()
    elif name == FACTS_FILE:
        version = int(data["refreshed_at"])
        assert data["on_sftp"] == ON_HOST and data["visits"] == []
    elif name == FINDINGS_FILE:
        [(epn, found)] = data.items()
        version = round(found["audited_at"] - BASE)
        assert epn == "12282a" and found["corrupt"] == ["frames/img_0001.cbf"]
    else:
        raise AssertionError(name)
    return version


KINDS = {  # each kind of write, and the files it writes
    "ignore.yml": ["ignore.yml"],
    "alerted.yml": ["alerted.yml"],
    "due clock and reasons": [DUE_FILE, REASONS_FILE],
    REFRESH_FAILURE_FILE: [REFRESH_FAILURE_FILE],
    REPORTED_FILE: [REPORTED_FILE],
    FACTS_FILE: [FACTS_FILE],
    PNG_NAME: [PNG_NAME],
    FINDINGS_FILE: [FINDINGS_FILE],
}
_SETTINGS: list = []  # the sample config's Settings (short_error masks its secrets), set before forking


def _write_until_killed(kind: str, folder: Path, first: int, confirmed) -> None:
    for version in itertools.count(first):
        _write_version(kind, folder, version)
        confirmed.value = version  # the write returned: it must survive


def test_state_writes_killed_at_random_moments_leave_the_old_or_the_new_content_whole(tmp_path):
    _SETTINGS[:] = [load_settings(sample_config(tmp_path / "config"))]
    rng = random.Random(18)
    rounds, kills_mid_write, versions, bad = {}, {}, {}, []
    for kind, names in KINDS.items():
        folder = tmp_path / kind.replace(" ", "-")
        folder.mkdir()
        _write_version(kind, folder, 0)
        rounds[kind] = kills_mid_write[kind] = 0
        deadline = time.monotonic() + SECONDS_PER_FILE
        # At least MIN_ROUNDS however loaded the machine is (a full run shares 2 cores with 4 workers),
        # and within a hard limit so a hang still ends the test.
        hard_limit = time.monotonic() + 12 * SECONDS_PER_FILE
        while (
            (time.monotonic() < deadline or rounds[kind] < MIN_ROUNDS)
            and time.monotonic() < hard_limit
            and not any(b.startswith(f"{kind}:") for b in bad)
        ):
            before = {name: _version_of(name, (folder / name).read_bytes()) for name in names}
            first = max(before.values()) + 1
            confirmed = CTX.Value("q", first - 1, lock=False)
            writer = CTX.Process(target=_write_until_killed, args=(kind, folder, first, confirmed))
            writer.start()
            time.sleep(rng.uniform(0, 0.02))
            os.kill(writer.pid, signal.SIGKILL)
            writer.join(10)
            assert writer.exitcode == -signal.SIGKILL, f"{kind}: the writer was not killed ({writer.exitcode})"
            rounds[kind] += 1
            last = confirmed.value
            versions[kind] = max(versions.get(kind, 0), last)
            for name in names:
                allowed = {last, last + 1} if last >= first else {before[name], first}
                try:
                    found = _version_of(name, (folder / name).read_bytes())
                except Exception as exc:  # any way of not being a whole version
                    bad.append(f"{kind}: {name} after round {rounds[kind]}: {type(exc).__name__}: {exc}")
                    continue
                if found not in allowed:
                    bad.append(f"{kind}: {name} holds version {found}, expected one of {sorted(allowed)}")
            orphans = list(folder.glob(".*.tmp"))  # a kill between creating the temp file and the rename
            kills_mid_write[kind] += bool(orphans)
            for orphan in orphans:
                orphan.unlink()
    figure(
        "power cut: writers SIGKILLed at random moments, "
        + "; ".join(
            f"{kind} {rounds[kind]} rounds ({kills_mid_write[kind]} cut mid-write, {versions[kind]} writes)"
            for kind in KINDS
        )
        + f"; {len(bad)} file(s) found empty, partial or rolled back"
    )
    assert bad == []
    assert all(n >= MIN_ROUNDS for n in rounds.values()), rounds
    assert sum(kills_mid_write.values()) > 0, "no kill landed inside a write: the loop proves nothing"


# -- a corrupt JSON state file -------------------------------------------------------------

CORRUPTIONS = {
    "cut short": b'{"12282a": 17639',
    "empty": b"",
    "zeros": b"\x00" * 4096,
    "not a mapping": b'["12282a"]',
}


def _read_through_its_module(name: str, folder: Path) -> object:
    """What the owning module makes of `name` (the call the sensor, the digest or the report makes)."""
    instance = _instance(folder)
    if name == DUE_FILE:
        return read_due_since(instance)
    if name == REASONS_FILE:
        return canary.read_reasons(instance)
    if name == REPORTED_FILE:
        return canary.read_reported(instance)
    if name == FACTS_FILE:
        return read_saved_facts(folder / name)
    if name == FINDINGS_FILE:
        return read_findings(folder / name)
    if name == REFRESH_FAILURE_FILE:  # read when the next failure is recorded, for since when
        later = NOW + timedelta(hours=1)
        since = record_refresh_failure(folder / name, "portal", PortalError("x"), later, _SETTINGS[0])
        return {} if since == later.timestamp() else {"since": since}
    raise AssertionError(name)


JSON_FILES = {  # each JSON state file, and how it is first written
    DUE_FILE: "due clock and reasons",
    REASONS_FILE: "due clock and reasons",
    REFRESH_FAILURE_FILE: REFRESH_FAILURE_FILE,
    REPORTED_FILE: REPORTED_FILE,
    FACTS_FILE: FACTS_FILE,
    FINDINGS_FILE: FINDINGS_FILE,
}


def test_a_corrupt_state_file_is_moved_aside_with_a_warning_never_silently_emptied(tmp_path, caplog):
    _SETTINGS[:] = [load_settings(sample_config(tmp_path / "config"))]
    silent, kept, injections = [], 0, 0
    for name, kind in JSON_FILES.items():
        for what, corrupt in CORRUPTIONS.items():
            folder = tmp_path / f"{name}-{what.replace(' ', '-')}"
            folder.mkdir()
            _write_version(kind, folder, 30)
            assert _read_through_its_module(name, folder), f"{name}: a good file reads as something"
            (folder / name).write_bytes(corrupt)
            injections += 1
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="assyncy"):
                value = _read_through_its_module(name, folder)
            asides = list(folder.glob(f"{name}.corrupt-*"))
            warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            if value:
                silent.append(f"{name} {what}: read as {value!r}")
            elif not (len(asides) == 1 and any(str(folder / name) in w and str(asides[0]) in w for w in warned)):
                silent.append(f"{name} {what}: read as empty; moved aside: {asides}; warnings: {warned}")
                continue
            kept += asides[0].read_bytes() == corrupt
            _write_version(kind, folder, 31)  # the next write starts afresh (a due clock from now)
            fresh = json.loads((folder / name).read_text())
            assert fresh and _read_through_its_module(name, folder), f"{name}: the new file is read"
            assert len(list(folder.glob(f"{name}.corrupt-*"))) == 1
    # ignore.yml and alerted.yml: refused, never read as empty (that would copy every EPN again).
    read_as_empty = []
    for kind in ("ignore.yml", "alerted.yml"):
        key = IGNORE_KEY if kind == "ignore.yml" else ALERTED_KEY
        for what, corrupt in {**CORRUPTIONS, "not a mapping": b"- 12282a\n"}.items():
            path = tmp_path / f"{kind}-{what.replace(' ', '-')}" / kind
            path.parent.mkdir()
            path.write_bytes(corrupt)
            injections += 1
            try:
                read_as_empty.append(f"{kind} {what}: read as {read_epns(path, key)!r}")
            except StateFileError as exc:
                assert str(exc).startswith(f"{path}: ") and "repair or restore it by hand" in str(exc)
            assert path.read_bytes() == corrupt
    figure(
        f"corrupt state files: {injections} injections ({len(CORRUPTIONS)} kinds of damage x "
        f"{len(JSON_FILES)} JSON files + ignore.yml and alerted.yml); {len(silent)} silent reset(s); "
        f"{kept} JSON files moved aside with their bytes kept; "
        f"{len(read_as_empty)} ignore.yml/alerted.yml read as empty"
    )
    assert silent == [] and read_as_empty == []
    assert kept == len(CORRUPTIONS) * len(JSON_FILES)
