"""A backlog of due EPNs through the real dagster-daemon, against the old tool's bare rsync.

Lays out `--epns` EPNs (default 200) of about `--epn-bytes` (1 MB) each in
`--files` files (MX-like frames, a log, `.info` and hidden clutter, as
`mx_frames` makes them) on a real local sshd (OpenSSH + rrsync, read-only),
every one mapped in `epn_cap_map` and its visit ended two days ago in a portal
simulator; `max-tasks: 2`, `execute: true`. Then, in the same run, alternating
which goes first when `--rounds` > 1 (round 1: bare first, then ours):

- bare: the old tool, i.e. the exact argv of `transfer_command(...)` for each EPN,
  two at a time (a ThreadPoolExecutor of 2), into a fresh destination root;
- ours: a fresh DAGSTER_HOME, a fresh destination root and an empty ignore.yml,
  `dagster-daemon run -m assyncy_dagster.definitions` (ASSYNCY_SENSOR_INTERVAL_SECONDS
  = `--sensor-interval`, 5 by default), timed from the daemon's start until every
  EPN is in ignore.yml's `previouslySynched` (or `--timeout`).

Goals: orchestration seconds per EPN, (ours - bare) / N, <= 0.3 s; the longest
epn_sensor tick (tick start to end, read from the instance's tick records)
<= 5 s. Also checked: every EPN has its own `epn_data`
materialisation for its partition, and no repatriation run failed. The ratio
ours / bare is printed too; the 1.2x goal it is compared with was set against
the old tool (mxsync), which is slower than bare rsync and not on this machine.

    .venv/bin/python benchmarks/backlog.py [--epns 200] [--rounds 1] [--timeout 900]
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
from daemon_bench import (
    dagster_daemon,
    failure_lines,
    far_from_the_digest,
    fresh_dagster_home,
    log_tail,
    materialisations_per_epn,
    portal_data,
    repatriation_runs,
    run_status_counts,
    sensor_ticks,
    tick_durations,
    visit,
    wait_until,
)

from assyncy_dagster.config import load_settings
from assyncy_dagster.epn import destination_for
from assyncy_dagster.run_records import IN_FLIGHT
from assyncy_dagster.state import read_epns
from assyncy_dagster.transfer import SshEndpoint, transfer_command
from assyncy_dagster_demo.portal_sim import PortalSimulator
from assyncy_dagster_demo.testing.smtp_sink import SmtpSink
from assyncy_dagster_demo.testing.sshd import LocalSshd
from assyncy_dagster_demo.testing.stack import lay_out_epns, mx_frames, write_config

GOAL_RATIO = 1.2
GOAL_PER_EPN = 0.3
GOAL_TICK = 5.0
PROJECT = "bench"


def bare_backlog(config: Path, epns: list[str], root: Path, workers: int) -> float:
    """The old tool: rsync each EPN with our exact argv, `workers` at a time. Wall seconds."""
    settings = load_settings(config)
    endpoint = SshEndpoint.from_settings(settings)
    argvs = [
        transfer_command(endpoint, epn, destination_for(epn, settings.epn_cap_map, root), dry_run=False) for epn in epns
    ]

    def one(argv: list[str]) -> int:
        return subprocess.run(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True
        ).returncode

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        codes = list(pool.map(one, argvs))
    seconds = time.perf_counter() - started
    bad = [(epn, code) for epn, code in zip(epns, codes, strict=True) if code != 0]
    if bad:
        raise RuntimeError(f"bare rsync failed for {len(bad)} EPN(s), e.g. {bad[:5]}")
    return seconds


def ours_backlog(work: Path, args, base_config: dict, epns: list[str], round_: int) -> dict:
    """The real daemon on a fresh instance; wall seconds until every EPN is in ignore.yml, and what it did."""
    folder = work / f"ours-{round_}"
    config = write_config(folder / "etc" / "config.yml", destination_root=folder / "destination", **base_config)
    settings = load_settings(config)
    settings.ignore.write_text("---\npreviouslySynched: []\n")
    home = fresh_dagster_home(folder / "dagster_home")
    log = folder / "daemon.log"
    wanted = set(epns)
    result: dict = {"log": log}
    os.sync()
    env = {"ASSYNCY_SENSOR_INTERVAL_SECONDS": str(args.sensor_interval)}
    with dagster_daemon(home, config, log, env=env) as daemon:
        started = time.time()
        done_at = wait_until(lambda: wanted <= read_epns(settings.ignore), args.timeout, daemon, poll=0.5)
        result["seconds"] = None if done_at is None else done_at - started
        result["home_count"] = len(wanted & read_epns(settings.ignore))
        # Let the last runs record their end before the daemon stops.
        with dg.DagsterInstance.from_config(str(home)) as instance:
            wait_until(lambda: not instance.get_runs(dg.RunsFilter(statuses=list(IN_FLIGHT))), 60, daemon)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = repatriation_runs(instance)
        result["runs"] = len(records)
        result["statuses"] = run_status_counts(records)
        result["failures"] = failure_lines(instance, records)
        ticks = sensor_ticks(instance)
        durations = tick_durations(ticks)
        result["ticks"] = len(ticks)
        result["longest_tick"] = max(durations) if durations else None
        result["tick_statuses"] = dict(sorted({t.status.value: 0 for t in ticks}.items()))
        for t in ticks:
            result["tick_statuses"][t.status.value] += 1
        result["tick_errors"] = [str(t.error.message).strip()[:300] for t in ticks if t.error][:3]
        counts = materialisations_per_epn(instance, epns)
        result["materialised"] = sum(1 for c in counts.values() if c >= 1)
        result["materialised_twice"] = sorted(e for e, c in counts.items() if c > 1)
    shutil.rmtree(folder / "destination", ignore_errors=True)  # keep the disk small between rounds
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epns", type=int, default=200, help="due EPNs (default 200)")
    parser.add_argument("--epn-bytes", type=int, default=1_000_000, help="bytes per EPN (default 1 MB)")
    parser.add_argument("--files", type=int, default=21, help="files per EPN, hidden ones included (default 21)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of both sides, alternating order (default 1)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds ours may take per round (default 900)")
    parser.add_argument(
        "--sensor-interval", type=int, default=5, help="ASSYNCY_SENSOR_INTERVAL_SECONDS for the daemon (default 5)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (daemon logs) and print it")
    args = parser.parse_args(argv)
    if args.files < 5:
        parser.error("--files must be at least 5 (mx_frames adds a log, .info and two hidden files)")

    epns = [f"{20000 + i}a" for i in range(args.epns)]
    frames = args.files - 4
    files = mx_frames(frames, args.epn_bytes // frames)
    work = Path(tempfile.mkdtemp(prefix="assyncy-backlog-"))
    bare_seconds: list[float] = []
    ours: list[dict] = []
    try:
        with (
            LocalSshd() as sshd,
            SmtpSink() as smtp,
            PortalSimulator(
                portal_data({23: [visit(100000 + i, epn, "now-3d", "now-2d") for i, epn in enumerate(epns)], 24: []})
            ) as portal,
        ):
            lay_out_epns(sshd, dict.fromkeys(epns, files))
            base_config = {
                "portal_url": portal.url,
                "sshd": sshd,
                "smtp_port": smtp.port,
                "epn_cap_map": {epn.rstrip("a"): PROJECT for epn in epns},
                "execute": True,
                "max_tasks": 2,
                "extra": {"timezone": far_from_the_digest(), "visit-day-range": 60},
            }
            bare_config = write_config(
                work / "bare-etc" / "config.yml", destination_root=work / "bare-0", **base_config
            )
            print(
                f"{args.epns} EPNs of {args.epn_bytes} bytes in {args.files} files each "
                f"({frames} frames of {args.epn_bytes // frames} B + log, .info, 2 hidden), max-tasks 2, "
                f"{args.rounds} round(s), work folder {work}"
            )

            def run_bare(round_: int) -> None:
                root = work / f"bare-{round_}"
                shutil.rmtree(root, ignore_errors=True)
                root.mkdir(parents=True)
                os.sync()
                seconds = bare_backlog(bare_config, epns, root, workers=2)
                bare_seconds.append(seconds)
                print(f"round {round_ + 1}: bare rsync x2        {seconds:8.1f} s", flush=True)
                shutil.rmtree(root, ignore_errors=True)

            def run_ours(round_: int) -> None:
                result = ours_backlog(work, args, base_config, epns, round_)
                ours.append(result)
                shown = "TIMED OUT" if result["seconds"] is None else f"{result['seconds']:8.1f} s"
                print(
                    f"round {round_ + 1}: ours (dagster-daemon) {shown}  ({result['home_count']}/{args.epns} "
                    f"EPNs in ignore.yml, {result['runs']} runs)",
                    flush=True,
                )
                if result["seconds"] is None:
                    print(f"--- tail of {result['log']} ---\n{log_tail(result['log'])}")

            for round_ in range(args.rounds):
                for side in (run_bare, run_ours) if round_ % 2 == 0 else (run_ours, run_bare):
                    side(round_)
            smtp_messages = len(smtp.messages)
            portal_stats = portal.stats()
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    return report(args, bare_seconds, ours, smtp_messages, portal_stats)


def report(args, bare_seconds: list[float], ours: list[dict], smtp_messages: int, portal_stats: dict) -> int:
    n = args.epns
    ok = True
    print()
    print(f"== backlog of {n} EPNs, {args.rounds} round(s) ==")
    for i, r in enumerate(ours):
        print(
            f"round {i + 1}: runs of repatriate_epn: {r['runs']} {dict(r['statuses'])}; "
            f"epn_sensor ticks: {r['ticks']} {r['tick_statuses']}; "
            f"EPNs with their own epn_data materialisation: {r['materialised']}/{n}"
            + (f"; materialised more than once: {r['materialised_twice'][:10]}" if r["materialised_twice"] else "")
        )
        for line in r["failures"]:
            print(f"  FAILED {line}")
        for line in r["tick_errors"]:
            print(f"  tick error: {line}")
        if r["materialised"] != n or r["failures"] or r["home_count"] != n:
            ok = False
    print(
        f"failure e-mails received: {smtp_messages}; portal requests: {portal_stats['requests']} "
        f"(by path {portal_stats['by_path']})"
    )
    if not bare_seconds or not ours or any(r["seconds"] is None for r in ours):
        print("ours did not finish within the timeout: goals MISSED")
        return 1
    bare = statistics.median(bare_seconds)
    mine = statistics.median(r["seconds"] for r in ours)
    ratio = statistics.median(r["seconds"] / b for r, b in zip(ours, bare_seconds, strict=True))
    per_epn = (mine - bare) / n
    ticks = [r["longest_tick"] for r in ours if r["longest_tick"] is not None]
    longest = max(ticks) if ticks else float("nan")

    def verdict(met: bool) -> str:
        return "met" if met else "MISSED"

    print(f"bare rsync, 2 at a time:           {bare:8.1f} s (median)")
    print(f"ours, daemon start -> all home:    {mine:8.1f} s (median)")
    # The 1.2x goal is against the old tool (mxsync), not bare rsync; the old
    # tool is not on this machine, so the ratio to bare rsync, a stricter baseline,
    # is shown for information and the exit status follows the two goals below.
    print(
        f"ratio ours / bare rsync:           {ratio:8.2f}   (for information; the <= {GOAL_RATIO}x goal is "
        f"against the old tool, which is not here): {verdict(ratio <= GOAL_RATIO)}"
    )
    print(
        f"orchestration per EPN over bare:   {per_epn:8.3f} s (goal <= {GOAL_PER_EPN}): "
        f"{verdict(per_epn <= GOAL_PER_EPN)}"
    )
    print(
        f"longest epn_sensor tick:           {longest:8.2f} s (goal <= {GOAL_TICK}; from the instance's tick "
        f"records, end - start): {verdict(longest <= GOAL_TICK)}"
    )
    ok = ok and per_epn <= GOAL_PER_EPN and longest <= GOAL_TICK
    print("goals met" if ok else "goal MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
