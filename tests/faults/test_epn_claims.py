"""One transfer per EPN, everywhere: two runs racing for the same EPNs, round after round.

Each round starts two real processes at once, each carrying the same 25 EPNs in the same
order (the most contention: both reach for the same EPN at the same moment), of two kinds:

- a batch: `python -m assyncy_dagster.worker`, the `repatriate_epn` run that epn_sensor's
  batches and mxsync start;
- a backfill: a process materialising `epn_data` over a partition range, the run a UI
  backfill launches (`dagster asset materialize` cannot take a range of this asset).

Meanwhile every rsync process on the machine is sampled every 50 ms. Never two rsyncs into
one destination, every EPN recorded (materialised, ignore.yml) exactly once per round, every
run successful (an EPN another run holds is skipped, naming the holder: no failure, so no
failure e-mail). ASSYNCY_FAULT_CLAIM_ROUNDS sets the number of rounds (default 4: 100 races, under
2 minutes here). 50 rounds (1250 races) took 22 minutes on this loaded 2-core machine: 17,696 samples,
never two rsyncs into one destination, 1250 EPNs home once each and 1250 skips, 0 failures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest

from assyncy_dagster.claims import claims
from assyncy_dagster.outcomes import Outcome
from assyncy_dagster.partitions import EPN_PARTITIONS_NAME
from assyncy_dagster.run_records import tagged_epns
from assyncy_dagster_demo.portal_sim import PortalSimulator
from assyncy_dagster_demo.testing.processes import rsync_invocations_live
from assyncy_dagster_demo.testing.stack import lay_out_epns, mx_frames
from tests.support.faultkit import figure
from tests.support.helpers import batch_worker_argv, demo_accounts_portal_data, running

ROUNDS = int(os.environ.get("ASSYNCY_FAULT_CLAIM_ROUNDS", "4"))
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120 + 60 * ROUNDS)]

PER_ROUND = 25
KINDS = [("batch", "backfill"), ("backfill", "batch"), ("batch", "batch"), ("backfill", "backfill")]
SAMPLE_SECONDS = 0.05

BACKFILL = textwrap.dedent(
    """
    import sys
    import dagster as dg
    from assyncy_dagster.assets.epn_data import epn_data
    from assyncy_dagster.definitions import build_resources
    from assyncy_dagster.cycle import quiet_dagster_previews

    quiet_dagster_previews()
    first, last = sys.argv[1:3]
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize(
            [epn_data],
            instance=instance,
            resources=build_resources(),
            tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
            raise_on_error=False,
        )
    print("assyncy-backfill-run:", result.run_id, flush=True)
    sys.exit(0 if result.success else 1)
    """
)


def _round_epns(number: int) -> list[str]:
    """25 fresh EPNs per round, each base number mapped to the project ny79."""
    return [f"{20001 + number}{chr(ord('a') + i)}" for i in range(PER_ROUND)]


def _argv(kind: str, config_path: Path, epns: list[str]) -> list[str]:
    if kind == "backfill":
        return [sys.executable, "-c", BACKFILL, epns[0], epns[-1]]
    return batch_worker_argv(config_path, epns)


class RsyncSampler(threading.Thread):
    """Every 50 ms, the rsync transfers writing under `root` (the kit's rsync_invocations_live), by destination."""

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.root = str(root)
        self.samples = 0
        self.most: Counter[str] = Counter()  # destination -> most transfers at one sample
        self.doubled: list[tuple[str, list[int]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_SECONDS):
            by_destination: dict[str, list[int]] = {}
            for pid, cmdline in rsync_invocations_live():
                destination = cmdline[-1]
                if destination.startswith(self.root):
                    by_destination.setdefault(destination.rstrip("/"), []).append(pid)
            self.samples += 1
            for destination, pids in by_destination.items():
                self.most[destination] = max(self.most[destination], len(pids))
                if len(pids) > 1:
                    self.doubled.append((destination, pids))


def _records(instance: dg.DagsterInstance, epn: str) -> int:
    return len(
        instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("epn_data"), asset_partitions=[epn]), limit=10
        ).records
    )


def test_two_runs_racing_for_the_same_epns_never_transfer_one_twice(stack, tmp_path):
    epns_by_round = [_round_epns(n) for n in range(ROUNDS)]
    every = [e for epns in epns_by_round for e in epns]
    visits = [(epn, "now-3d", "now-2d") for epn in every]
    with PortalSimulator(demo_accounts_portal_data(visits)) as portal:
        stack.configure(
            **{
                "base-url": portal.url,
                "epn_cap_map": {str(20001 + n): "ny79" for n in range(ROUNDS)},
                "max-tasks": 2,
                "rsync-bwlimit-kib": 512,  # each EPN's rsync lasts about half a second
            }
        )
        stack.instance.event_log_storage.set_concurrency_slots("rsync", 2)  # both runs at once
        lay_out_epns(stack.sshd, {e: mx_frames(1, 256 * 1024) for e in every}, beamline=stack.beamline)
        stack.instance.add_dynamic_partitions(EPN_PARTITIONS_NAME, every)
        env = {**os.environ, "ASSYNCY_QUIET_PREVIEWS": "1"}
        sampler = RsyncSampler(stack.destination_root)
        sampler.start()
        outcomes: Counter[str] = Counter()
        twice, failures, durations = [], [], []
        try:
            for number, epns in enumerate(epns_by_round):
                kinds = KINDS[number % len(KINDS)]
                started = time.monotonic()
                logs = [tmp_path / f"round-{number:02d}-{i}-{kind}.log" for i, kind in enumerate(kinds)]
                before = {r.run_id for r in stack.instance.get_runs()}
                with (
                    open(logs[0], "w") as out0,
                    open(logs[1], "w") as out1,
                    running(
                        _argv(kinds[0], stack.config_path, epns), stdout=out0, stderr=subprocess.STDOUT, env=env
                    ) as p0,
                    running(
                        _argv(kinds[1], stack.config_path, epns), stdout=out1, stderr=subprocess.STDOUT, env=env
                    ) as p1,
                ):
                    codes = (p0.wait(timeout=300), p1.wait(timeout=300))
                durations.append(time.monotonic() - started)
                runs = [r for r in stack.instance.get_runs() if r.run_id not in before]
                if codes != (0, 0) or len(runs) != 2:
                    failures.append(
                        f"round {number} {kinds}: exit codes {codes}, {len(runs)} runs: "
                        + " | ".join(log.read_text()[-1500:] for log in logs)
                    )
                    continue
                home_in = Counter()
                for run in runs:
                    assert run.status == dg.DagsterRunStatus.SUCCESS, run.run_id
                    tags = tagged_epns(run.tags)
                    assert set(tags) == set(epns), (run.run_id, tags)
                    outcomes.update(tags.values())
                    home_in.update(e for e, o in tags.items() if o == Outcome.HOME.value)
                for epn in epns:
                    records = _records(stack.instance, epn)
                    if home_in[epn] != 1 or records != 1:
                        twice.append(f"round {number}: {epn} home in {home_in[epn]} runs, {records} records")
                assert claims(stack.instance, epns) == {}, "a claim was not given back"
        finally:
            sampler.stop.set()
            sampler.join()
    recorded = Counter(stack.ignored())
    figure(
        f"EPN claims: {ROUNDS} rounds of two runs (batch and backfill, both orders, and each against itself) "
        f"racing for the same {PER_ROUND} EPNs ({ROUNDS * PER_ROUND} races), {sum(durations):.0f} s: outcomes "
        f"{dict(outcomes)}; {sampler.samples} samples of rsync every {SAMPLE_SECONDS * 1000:.0f} ms, at most "
        f"{max(sampler.most.values(), default=0)} rsync into one destination, {len(sampler.doubled)} samples with "
        f"two; {len(twice)} EPNs recorded twice or never; {len(failures)} failed rounds"
    )
    assert failures == []
    assert sampler.doubled == []
    assert twice == []
    assert outcomes[Outcome.FAILED.value] == 0 and outcomes[Outcome.QUEUED.value] == 0
    assert outcomes[Outcome.RUNNING.value] == 0
    assert outcomes[Outcome.SKIPPED.value] >= ROUNDS * PER_ROUND * 0.5, "the runs did not really race"
    assert sorted(recorded) == sorted(every) and set(recorded.values()) == {1}
    # The sampler really watched: it saw (nearly) every transfer. Each lasts about half a second, but
    # a sample of every process can take that long on a loaded machine (a run with more test
    # workers than cores saw 98 of 100).
    assert sampler.samples > 100 and len(sampler.most) >= 0.9 * len(every), (len(sampler.most), len(every))
