"""A backlog of due EPNs through the real dagster-daemon, against the old tool's bare rsync.

Lays out `--epns` EPNs (default 200) of about `--epn-bytes` (1 MB) each in
`--files` files (MX-like frames, a log, `.info` and hidden clutter, as
`mx_frames` makes them) on a real local sshd (OpenSSH + rrsync, read-only),
every one mapped in `epn_cap_map` and its visit ended two days ago in a portal
simulator; `max-tasks: 2`, `execute: true`. Then, in the same run, alternating
the order every round (round 1: bare, ours with etc/dagster.yaml, ours on
Dagster's default instance; round 2 the other way round):

- bare: the old tool, i.e. the exact argv of `transfer_command(...)` for each EPN,
  two at a time (a ThreadPoolExecutor of 2), into a fresh destination root; each
  rsync makes its own ssh connection, as the old tool's did;
- ours: a fresh DAGSTER_HOME (with a copy of etc/dagster.yaml, or with none:
  Dagster's default instance, `--instances`), a fresh destination root and an
  empty ignore.yml, `dagster-daemon run -m assyncy_dagster.definitions`
  (ASSYNCY_SENSOR_INTERVAL_SECONDS = `--sensor-interval`, by default production's
  30 s: a tick costs CPU, up to seconds with 200 EPNs in flight, that the transfers share), timed
  from the daemon's start until every EPN is in ignore.yml's `previouslySynched`
  (or `--timeout`). A batch run's transfers share one ssh connection
  (transfer/connection.py).

Goal: ours <= 1.2x bare (issue 19), daemon start included. The breakdown of each
round of ours: daemon start to its first sensor tick, to the first run's start,
to the first EPN recorded (and, with `--record-sessions`, to the first transfer
the host saw); per lane, the seconds per EPN (between a run's first and last
epn_data materialisation); the gaps between a run's end and the start of the
run that took its rsync slot; and with `--record-sessions` (the host logs each
ssh session, see session_log.py: a python3 wrapper around the forced command,
which both sides then pay) how long 1, 2, ... transfers ran at once, never more
than max-tasks. Also checked: every EPN has its own `epn_data` materialisation,
no repatriation run failed, the longest epn_sensor tick <= 5 s.

    .venv/bin/python benchmarks/backlog.py [--epns 200] [--rounds 2] [--instances both] [--record-sessions]
"""

from __future__ import annotations

import argparse
import heapq
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
    epn_data_times,
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
from assyncy_dagster.sensors.epn_sensor import TICK_SECONDS
from assyncy_dagster.state import read_epns
from assyncy_dagster.transfer import SshEndpoint, transfer_command
from assyncy_dagster_demo.portal_sim import PortalSimulator
from assyncy_dagster_demo.testing.session_log import Session, most_at_once, seconds_at_once
from assyncy_dagster_demo.testing.smtp_sink import SmtpSink
from assyncy_dagster_demo.testing.sshd import LocalSshd
from assyncy_dagster_demo.testing.stack import lay_out_epns, mx_frames, write_config

GOAL_RATIO = 1.2
GOAL_TICK = 5.0
PROJECT = "bench"
MAX_TASKS = 2
KINDS = {"etc": "etc/dagster.yaml", "default": "default instance"}


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


def ours_backlog(work: Path, args, base_config: dict, epns: list[str], round_: int, kind: str, sshd: LocalSshd) -> dict:
    """The real daemon on a fresh instance; wall seconds until every EPN is in ignore.yml, and what it did."""
    folder = work / f"ours-{kind}-{round_}"
    config = write_config(folder / "etc" / "config.yml", destination_root=folder / "destination", **base_config)
    settings = load_settings(config)
    settings.ignore.write_text("---\npreviouslySynched: []\n")
    home = fresh_dagster_home(folder / "dagster_home", dagster_yaml=kind == "etc")
    log = folder / "daemon.log"
    wanted = set(epns)
    result: dict = {"log": log}
    os.sync()
    env = {"ASSYNCY_SENSOR_INTERVAL_SECONDS": str(args.sensor_interval)}
    sessions_before = len(sshd.sessions()) if args.record_sessions else 0
    mono_started = time.monotonic()
    with dagster_daemon(home, config, log, env=env) as daemon:
        started = time.time()
        done_at = wait_until(lambda: wanted <= read_epns(settings.ignore), args.timeout, daemon, poll=0.5)
        result["seconds"] = None if done_at is None else done_at - started
        result["home_count"] = len(wanted & read_epns(settings.ignore))
        # Let the last runs record their end before the daemon stops.
        with dg.DagsterInstance.from_config(str(home)) as instance:
            wait_until(lambda: not instance.get_runs(dg.RunsFilter(statuses=list(IN_FLIGHT))), 60, daemon)
    if args.record_sessions:
        result["sessions"] = [
            s
            for s in sshd.sessions()[sessions_before:]
            if "--list-only" not in s.command.split() and s.start >= mono_started
        ]
        result["mono_started"] = mono_started
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
        result["breakdown"] = breakdown(instance, records, ticks, started)
    shutil.rmtree(folder / "destination", ignore_errors=True)  # keep the disk small between rounds
    return result


def breakdown(instance: dg.DagsterInstance, records: list, ticks: list, started: float) -> dict:
    """Where a round of ours went, in seconds from the daemon's start (see the module docstring)."""
    runs = []
    for record in sorted(records, key=lambda r: r.start_time or float("inf")):
        times = epn_data_times(instance, record.dagster_run.run_id)
        runs.append({"start": record.start_time, "end": record.end_time, "epn_times": times})
    recorded = sorted(t for run in runs for t in run["epn_times"])
    per_epn = [
        (run["epn_times"][-1] - run["epn_times"][0]) / (len(run["epn_times"]) - 1)
        for run in runs
        if len(run["epn_times"]) > 1
    ]
    # A run beyond the first max-tasks ones takes the rsync slot of the run that ended first.
    lanes_free: list[float] = []
    gaps = []
    for run in runs:
        if run["start"] is None or not run["epn_times"]:  # a run whose EPNs were all taken by others
            continue
        if len(lanes_free) >= MAX_TASKS:
            gaps.append(run["start"] - heapq.heappop(lanes_free))
        if run["end"] is not None:
            heapq.heappush(lanes_free, run["end"])
    starts = [run["start"] for run in runs if run["start"] is not None]
    return {
        "first_tick": ticks[0].timestamp - started if ticks else None,
        "first_run_start": min(starts) - started if starts else None,
        "first_epn_recorded": recorded[0] - started if recorded else None,
        "last_epn_recorded": recorded[-1] - started if recorded else None,
        "per_epn_per_lane": per_epn,
        "gaps": gaps,
        "runs_with_work": sum(1 for run in runs if run["epn_times"]),
    }


def transfer_figures(result: dict) -> str:
    """The host's view of a round: first transfer, and how long k transfers ran at once."""
    sessions: list[Session] = result.get("sessions") or []
    if not sessions:
        return ""
    first = sessions[0].start - result["mono_started"]
    spent = ", ".join(f"{k} for {t:.1f} s" for k, t in seconds_at_once(sessions).items())
    return (
        f"; host: {len(sessions)} transfers, first {first:.1f} s after the daemon's start, "
        f"at most {most_at_once(sessions)} at once ({spent})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epns", type=int, default=200, help="due EPNs (default 200)")
    parser.add_argument("--epn-bytes", type=int, default=1_000_000, help="bytes per EPN (default 1 MB)")
    parser.add_argument("--files", type=int, default=21, help="files per EPN, hidden ones included (default 21)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every side, alternating order (default 1)")
    parser.add_argument(
        "--instances",
        choices=["both", *KINDS],
        default="both",
        help="ours with etc/dagster.yaml, on Dagster's default instance (no dagster.yaml), or both (default)",
    )
    parser.add_argument(
        "--record-sessions", action="store_true", help="the host logs each ssh session: transfers counted at once"
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds ours may take per round (default 900)")
    parser.add_argument(
        "--sensor-interval",
        type=int,
        default=TICK_SECONDS,
        help=f"ASSYNCY_SENSOR_INTERVAL_SECONDS for the daemon (default {TICK_SECONDS}, production's; each tick "
        "costs CPU that the transfers share)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (daemon logs) and print it")
    args = parser.parse_args(argv)
    if args.files < 5:
        parser.error("--files must be at least 5 (mx_frames adds a log, .info and two hidden files)")

    kinds = list(KINDS) if args.instances == "both" else [args.instances]
    epns = [f"{20000 + i}a" for i in range(args.epns)]
    frames = args.files - 4
    files = mx_frames(frames, args.epn_bytes // frames)
    work = Path(tempfile.mkdtemp(prefix="assyncy-backlog-"))
    bare_seconds: list[float] = []
    ours: dict[str, list[dict]] = {kind: [] for kind in kinds}
    try:
        with (
            LocalSshd(record_sessions=args.record_sessions) as sshd,
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
                "max_tasks": MAX_TASKS,
                "extra": {"timezone": far_from_the_digest(), "visit-day-range": 60},
            }
            bare_config = write_config(
                work / "bare-etc" / "config.yml", destination_root=work / "bare-0", **base_config
            )
            print(
                f"{args.epns} EPNs of {args.epn_bytes} bytes in {args.files} files each "
                f"({frames} frames of {args.epn_bytes // frames} B + log, .info, 2 hidden), max-tasks {MAX_TASKS}, "
                f"{args.rounds} round(s), ours on {', '.join(KINDS[k] for k in kinds)}, sensor every "
                f"{args.sensor_interval} s, "
                f"sessions recorded: {args.record_sessions}, work folder {work}"
            )

            def run_bare(round_: int) -> None:
                root = work / f"bare-{round_}"
                shutil.rmtree(root, ignore_errors=True)
                root.mkdir(parents=True)
                os.sync()
                seconds = bare_backlog(bare_config, epns, root, workers=MAX_TASKS)
                bare_seconds.append(seconds)
                print(f"round {round_ + 1}: bare rsync x{MAX_TASKS}                 {seconds:8.1f} s", flush=True)
                shutil.rmtree(root, ignore_errors=True)

            def run_ours(kind: str):
                def side(round_: int) -> None:
                    result = ours_backlog(work, args, base_config, epns, round_, kind, sshd)
                    ours[kind].append(result)
                    shown = "TIMED OUT" if result["seconds"] is None else f"{result['seconds']:8.1f} s"
                    print(
                        f"round {round_ + 1}: ours ({KINDS[kind]:>16}) {shown}  ({result['home_count']}/{args.epns} "
                        f"EPNs in ignore.yml, {result['runs']} runs)",
                        flush=True,
                    )
                    if result["seconds"] is None:
                        print(f"--- tail of {result['log']} ---\n{log_tail(result['log'])}")

                return side

            sides = [run_bare, *(run_ours(kind) for kind in kinds)]
            for round_ in range(args.rounds):
                for side in sides if round_ % 2 == 0 else reversed(sides):
                    side(round_)
            smtp_messages = len(smtp.messages)
            portal_stats = portal.stats()
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    return report(args, bare_seconds, ours, smtp_messages, portal_stats)


def spread(values: list[float]) -> str:
    return f"{min(values):6.1f} / {statistics.median(values):6.1f} / {max(values):6.1f} s"


def report(args, bare_seconds: list[float], ours: dict[str, list[dict]], smtp_messages: int, portal_stats: dict) -> int:
    n = args.epns
    ok = True
    print()
    print(f"== backlog of {n} EPNs, max-tasks {MAX_TASKS}, {args.rounds} round(s) ==")
    for kind, results in ours.items():
        for i, r in enumerate(results):
            b = r["breakdown"]

            def at(key: str, b: dict = b) -> str:
                return "-" if b[key] is None else f"{b[key]:.1f} s"

            lanes = b["per_epn_per_lane"]
            gaps = b["gaps"]
            print(
                f"{KINDS[kind]}, round {i + 1}: {r['runs']} runs {dict(r['statuses'])}; epn_sensor ticks: {r['ticks']} "
                f"{r['tick_statuses']}; EPNs with their own epn_data materialisation: {r['materialised']}/{n}"
                + (f"; materialised more than once: {r['materialised_twice'][:10]}" if r["materialised_twice"] else "")
            )
            print(
                f"  {b['runs_with_work']} runs brought EPNs home (the others found theirs taken while they waited)\n"
                f"  from the daemon's start: first tick {at('first_tick')}, first run started {at('first_run_start')}, "
                f"first EPN recorded {at('first_epn_recorded')}, last {at('last_epn_recorded')}; per lane "
                + (
                    f"{statistics.median(lanes):.3f} s per EPN (runs: {', '.join(f'{x:.3f}' for x in lanes)})"
                    if lanes
                    else "-"
                )
                + (f"; gaps before a run took a freed slot: {', '.join(f'{g:.1f}' for g in gaps)} s" if gaps else "")
                + transfer_figures(r)
            )
            for line in r["failures"]:
                print(f"  FAILED {line}")
            for line in r["tick_errors"]:
                print(f"  tick error: {line}")
            if r["materialised"] != n or r["failures"] or r["home_count"] != n:
                ok = False
            sessions = r.get("sessions") or []
            if sessions and most_at_once(sessions) > MAX_TASKS:
                print(f"  MORE than max-tasks {MAX_TASKS} transfers at once")
                ok = False
    print(
        f"failure e-mails received: {smtp_messages}; portal requests: {portal_stats['requests']} "
        f"(by path {portal_stats['by_path']})"
    )
    if not bare_seconds or any(r["seconds"] is None for results in ours.values() for r in results):
        print("ours did not finish within the timeout: goal MISSED")
        return 1
    print(f"{'':34} min / median / max")
    print(
        f"bare rsync, {MAX_TASKS} at a time:          {spread(bare_seconds)}   "
        f"({statistics.median(bare_seconds) / (n / MAX_TASKS):.3f} s per EPN per lane; an ssh connection each)"
    )
    for kind, results in ours.items():
        seconds = [r["seconds"] for r in results]
        # Each round's ours against the same round's bare.
        ratios = [r["seconds"] / b for r, b in zip(results, bare_seconds, strict=True)]
        met = statistics.median(ratios) <= GOAL_RATIO
        ok = ok and met
        print(
            f"ours, {KINDS[kind]:>16}:         {spread(seconds)}   ratio to bare per round "
            f"{', '.join(f'{x:.2f}' for x in ratios)} (median {statistics.median(ratios):.2f}; goal <= {GOAL_RATIO}: "
            f"{'met' if met else 'MISSED'})"
        )
    ticks = [r["longest_tick"] for results in ours.values() for r in results if r["longest_tick"] is not None]
    longest = max(ticks) if ticks else float("nan")
    print(
        f"longest epn_sensor tick: {longest:.2f} s (goal <= {GOAL_TICK}): {'met' if longest <= GOAL_TICK else 'MISSED'}"
    )
    ok = ok and longest <= GOAL_TICK
    print("goals met" if ok else "goal MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
