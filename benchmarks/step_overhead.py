"""What a Dagster step adds to rsync: `dagster asset materialize` against bare rsync, alternating.

Starts a real local sshd (OpenSSH + `rrsync -ro`, no rate limit), a portal
simulator with an ended visit for each EPN, and a fresh DAGSTER_HOME holding a
copy of `etc/dagster.yaml`. Then, in rounds that swap which side goes first:

- ours: `dagster asset materialize -m assyncy_dagster.definitions --select epn_data
  --partition EPN`, exactly as a user types it; the step's time is read from
  the run's event log (STEP_START -> STEP_SUCCESS);
- bare: rsync with the very argv `transfer_command` builds, timed around the process.

Each round runs the sides in ABBA order (BAAB the next round) and takes each
side's mean, so that neither side always meets the slower position.

Every round also materialises a tiny EPN (one 1 KiB file): the step's fixed
cost (the portal call, run tags, one ssh connection). The *phase* of ours is
step(EPN) - step(tiny), as the transfer-engine issue defines it. The stricter
*marginal* ratio (step(EPN) - step(tiny)) / (bare(EPN) - bare(tiny)) is printed
too: it also charges ours for the connection set-up bare pays.

Ours makes the EPN durable before recording it (one syncfs of the destination's file
system) and writes its checksum manifest; bare rsync does neither. Each bare run is
therefore followed by `sync -f` on the destination, timed apart: the report gives
ours/bare and ours/(bare + that flush), and from ours' own metadata what the flush
and the manifest took inside the step (the manifest's share is the issue's "writing
the manifest adds <= 5 %" figure, on the 100,000-file EPN with `--files 100000`).

Scenarios (goal in brackets, on the median of the per-round ratios):
  big     one 1 GiB EPN in 4 files, first copy: throughput ours/bare [>= 0.97]
  noop    a 10,000-file EPN already home: phase ours/bare            [<= 1.1]
  first   the same 10,000-file EPN into an empty destination         [<= 1.2]

    .venv/bin/python benchmarks/step_overhead.py [--rounds 5] [--only big,noop,first]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
from daemon_bench import BIN, fresh_dagster_home, portal_data, visit

from assyncy_dagster.config import load_settings
from assyncy_dagster.epn import destination_for
from assyncy_dagster.transfer import SshEndpoint, transfer_command
from assyncy_dagster_demo.portal_sim import PortalSimulator
from assyncy_dagster_demo.testing.smtp_sink import SmtpSink
from assyncy_dagster_demo.testing.sshd import LocalSshd
from assyncy_dagster_demo.testing.stack import lay_out_epns, write_config

TINY, BIG, MANY = "30001a", "30002a", "30003a"
PROJECT = "bench"
GIB = 1 << 30
GOALS = {"big": (0.97, True), "noop": (1.1, False), "first": (1.2, False)}


def manifest_metadata(home: Path, run_id: str) -> dict[str, float]:
    """The flush and manifest seconds epn_data's materialisation of the run recorded."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        events = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    for event in events:
        meta = event.dagster_event.event_specific_data.materialization.metadata
        if "manifest_seconds" in meta:
            return {k: float(meta[k].value) for k in ("flush_seconds", "manifest_seconds")}
    return {"flush_seconds": 0.0, "manifest_seconds": 0.0}


LAST_RECORD: dict[str, float] = {}


def step_seconds(home: Path, run_id: str) -> float:
    """STEP_START -> STEP_SUCCESS of the run's epn_data step, from the event log."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        events = instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS})
    starts = [e.timestamp for e in events if e.dagster_event.event_type == dg.DagsterEventType.STEP_START]
    ends = [e.timestamp for e in events if e.dagster_event.event_type == dg.DagsterEventType.STEP_SUCCESS]
    if len(starts) != 1 or len(ends) != 1:
        raise RuntimeError(f"run {run_id}: expected one step start and success, got {len(starts)}/{len(ends)}")
    return ends[0] - starts[0]


def materialize(home: Path, config: Path, epn: str) -> float:
    """`dagster asset materialize` of one partition; the step's seconds."""
    env = {**os.environ, "DAGSTER_HOME": str(home), "ASSYNCY_CONFIG": str(config)}
    before = set()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        before = {r.dagster_run.run_id for r in instance.get_run_records()}
    proc = subprocess.run(
        [
            str(BIN / "dagster"),
            "asset",
            "materialize",
            "-m",
            "assyncy_dagster.definitions",
            "--select",
            "epn_data",
            "--partition",
            epn,
        ],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"dagster asset materialize {epn} failed:\n{proc.stderr[-3000:]}")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        new = [r.dagster_run for r in instance.get_run_records() if r.dagster_run.run_id not in before]
    if len(new) != 1 or new[0].status != dg.DagsterRunStatus.SUCCESS:
        raise RuntimeError(f"expected one successful run for {epn}, got {[(r.run_id, r.status) for r in new]}")
    LAST_RECORD.clear()
    LAST_RECORD.update(manifest_metadata(home, new[0].run_id))
    return step_seconds(home, new[0].run_id)


def flush(folder: Path) -> float:
    """What making `folder`'s file system durable costs right after a bare rsync (`sync -f`: syncfs)."""
    started = time.perf_counter()
    subprocess.run(["sync", "-f", str(folder)], check=True)
    return time.perf_counter() - started


def bare(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        check=True,
        start_new_session=True,
    )
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per scenario, alternating order (default 5)")
    parser.add_argument("--only", default="big,noop,first", help="scenarios to run (default big,noop,first)")
    parser.add_argument("--files", type=int, default=10_000, help="files of the many-file EPN (default 10000)")
    parser.add_argument(
        "--destination-dir",
        type=Path,
        default=None,
        help="put the destination root under this folder, e.g. /dev/shm (a separate file system "
        "from DAGSTER_HOME, as a data mover's destination usually is)",
    )
    parser.add_argument(
        "--home-dir",
        type=Path,
        default=None,
        help="put DAGSTER_HOME (the SQLite storage) under this folder, e.g. /dev/shm, instead of "
        "beside the destination on the same file system",
    )
    args = parser.parse_args(argv)
    wanted = [s for s in args.only.split(",") if s]

    work = Path(tempfile.mkdtemp(prefix="assyncy-step-"))
    home = destination_root = None
    results: dict[str, dict[str, list[float]]] = {}
    try:
        with (
            LocalSshd() as sshd,
            SmtpSink() as smtp,
            PortalSimulator(
                portal_data(
                    {
                        23: [visit(300000 + i, epn, "now-3d", "now-2d") for i, epn in enumerate((TINY, BIG, MANY))],
                        24: [],
                    }
                )
            ) as portal,
        ):
            lay_out_epns(
                sshd,
                {
                    TINY: {"frame.cbf": 1024},
                    BIG: {f"frames/big_{i}.h5": GIB // 4 for i in range(4)},
                    MANY: {f"run_{i // 100:03d}/img_{i:05d}.cbf": 512 for i in range(args.files)},
                },
            )
            destination_root = (
                Path(tempfile.mkdtemp(prefix="assyncy-step-dest-", dir=args.destination_dir))
                if args.destination_dir
                else work / "destination"
            )
            config = write_config(
                work / "etc" / "config.yml",
                portal_url=portal.url,
                sshd=sshd,
                smtp_port=smtp.port,
                destination_root=destination_root,
                epn_cap_map={"30001": PROJECT, "30002": PROJECT, "30003": PROJECT},
                execute=True,
                max_tasks=2,
            )
            settings = load_settings(config)
            (destination_root / PROJECT).mkdir(parents=True, exist_ok=True)
            home_parent = (
                Path(tempfile.mkdtemp(prefix="assyncy-step-home-", dir=args.home_dir)) if args.home_dir else work
            )
            home = fresh_dagster_home(home_parent / "dagster_home")
            with dg.DagsterInstance.from_config(str(home)) as instance:
                instance.add_dynamic_partitions("epn", [TINY, BIG, MANY])
            endpoint = SshEndpoint.from_settings(settings)

            def destination(epn: str) -> Path:
                return destination_for(epn, settings.epn_cap_map, settings.destination_root_path)

            def argv_for(epn: str) -> list[str]:
                return transfer_command(endpoint, epn, destination(epn), dry_run=False)

            def clear(epn: str) -> None:
                shutil.rmtree(destination(epn).parent, ignore_errors=True)
                settings.ignore.write_text("---\npreviouslySynched: []\n")
                os.sync()

            materialize(home, config, TINY)  # warm the caches once: imports, sshd, page cache
            print(
                f"work folder {work}; DAGSTER_HOME {home}; destination {destination_root}; sshd on port {sshd.port}; "
                f"{args.rounds} round(s) per scenario"
            )
            for scenario in wanted:
                epn = {"big": BIG, "noop": MANY, "first": MANY}[scenario]
                seen: dict[str, list[float]] = {
                    "ours": [],
                    "bare": [],
                    "ours_tiny": [],
                    "bare_tiny": [],
                    "bare_flush": [],
                    "ours_flush": [],
                    "ours_manifest": [],
                }
                if scenario == "noop":
                    clear(epn)
                    bare(argv_for(epn))
                for round_ in range(args.rounds):
                    clear(TINY)
                    seen["ours_tiny"].append(materialize(home, config, TINY))
                    clear(TINY)
                    seen["bare_tiny"].append(bare(argv_for(TINY)))
                    # ABBA within the round (BAAB the next): whichever position is slower on this
                    # machine at the moment, each side gets one early and one late run; a side's
                    # figure for the round is the mean of its two runs.
                    pair: dict[str, list[float]] = {
                        "ours": [],
                        "bare": [],
                        "bare_flush": [],
                        "ours_flush": [],
                        "ours_manifest": [],
                    }
                    first, second = ("bare", "ours") if round_ % 2 == 0 else ("ours", "bare")
                    for side in (first, second, second, first):
                        if scenario != "noop":
                            clear(epn)
                        if side == "bare":
                            pair["bare"].append(bare(argv_for(epn)))
                            pair["bare_flush"].append(flush(destination(epn)))
                        else:
                            pair["ours"].append(materialize(home, config, epn))
                            pair["ours_flush"].append(LAST_RECORD["flush_seconds"])
                            pair["ours_manifest"].append(LAST_RECORD["manifest_seconds"])
                    for side, runs in pair.items():
                        seen[side].append(statistics.fmean(runs))
                    print(
                        f"{scenario} round {round_ + 1}: ours step {seen['ours'][-1]:.3f} s "
                        f"(tiny step {seen['ours_tiny'][-1]:.3f} s), bare {seen['bare'][-1]:.3f} s "
                        f"(tiny {seen['bare_tiny'][-1]:.3f} s; then sync -f {seen['bare_flush'][-1]:.3f} s); "
                        f"ours' flush {seen['ours_flush'][-1]:.3f} s, manifest {seen['ours_manifest'][-1]:.3f} s",
                        flush=True,
                    )
                results[scenario] = seen
                clear(epn)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for extra, asked in ((home, args.home_dir), (destination_root, args.destination_dir)):
            if asked and extra is not None:
                shutil.rmtree(extra if extra.name.startswith("assyncy-") else extra.parent, ignore_errors=True)
    return report(results)


def report(results: dict[str, dict[str, list[float]]]) -> int:
    failed = 0
    print()
    for scenario, seen in results.items():
        goal, higher = GOALS[scenario]
        rounds = list(zip(seen["ours"], seen["ours_tiny"], seen["bare"], seen["bare_tiny"], strict=True))
        phase = [ours - tiny for ours, tiny, _, _ in rounds]
        if scenario == "big":
            paired = [b / p for p, (_, _, b, _) in zip(phase, rounds, strict=True)]  # throughput ours / bare
            marginal = [(b - bt) / p for p, (_, _, b, bt) in zip(phase, rounds, strict=True)]
            print(
                f"big: 1 GiB, ours {GIB / 2**20 / statistics.median(phase):.0f} MiB/s (phase "
                f"{statistics.median(phase):.2f} s), bare {GIB / 2**20 / statistics.median(seen['bare']):.0f} "
                f"MiB/s ({statistics.median(seen['bare']):.2f} s)"
            )
        else:
            paired = [p / b for p, (_, _, b, _) in zip(phase, rounds, strict=True)]
            marginal = [p / (b - bt) for p, (_, _, b, bt) in zip(phase, rounds, strict=True)]
            print(
                f"{scenario}: ours phase {statistics.median(phase):.3f} s, bare {statistics.median(seen['bare']):.3f} s"
            )
        flushed = [
            (b + f) / p if scenario == "big" else p / (b + f)
            for p, b, f in zip(phase, seen["bare"], seen["bare_flush"], strict=True)
        ]
        share = [m / p for m, p in zip(seen["ours_manifest"], phase, strict=True)]
        print(
            f"  ours' flush {statistics.median(seen['ours_flush']):.3f} s and manifest "
            f"{statistics.median(seen['ours_manifest']):.3f} s (manifest {100 * statistics.median(share):.1f} % "
            f"of the phase, per round {', '.join(f'{100 * x:.1f}' for x in share)}); bare's sync -f after rsync "
            f"{statistics.median(seen['bare_flush']):.3f} s; ratio against bare + sync -f "
            f"{statistics.median(flushed):.3f} (per round {', '.join(f'{r:.3f}' for r in flushed)})"
        )
        ratio = statistics.median(paired)
        met = ratio >= goal if higher else ratio <= goal
        failed += not met
        print(
            f"  median per-round ratio ours/bare {ratio:.3f} (goal {'>=' if higher else '<='} {goal}): "
            f"{'met' if met else 'MISSED'}; strict marginal ratio {statistics.median(marginal):.3f}; "
            f"per round {', '.join(f'{r:.3f}' for r in paired)}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
