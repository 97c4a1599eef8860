"""From a visit's end to its EPN at home, through the real dagster-daemon, and the portal load at rest.

One EPN (about `--epn-bytes`, 1 MB, in `--files` MX-like files) is already on a
real local sshd (OpenSSH + rrsync, read-only); its visit, in a portal simulator
with two equipment accounts, is running when the daemon starts and ends
`--visit-ends-in` (40) seconds later. config.yml has `sync-frequency-hours: 1`,
`execute: true`; the daemon (`dagster-daemon run -m assyncy_dagster.definitions`)
runs with the default sensor interval (ASSYNCY_SENSOR_INTERVAL_SECONDS unset),
i.e. what users get.

Measured:

- the transfer alone: bare rsync of the same EPN (the exact argv of
  `transfer_command`) into a scratch folder, before the daemon starts (median of
  `--bare-repeats`);
- latency: visit end -> the EPN in ignore.yml's `previouslySynched`, minus the
  bare transfer time. Goal <= 120 s. (The EPN must not arrive before the visit ends.)
- then the daemon is left idle for `--idle-seconds` (180): portal requests per
  minute per equipment account in that window, from the simulator's stats.
  Goal <= 1.

    .venv/bin/python benchmarks/latency.py [--visit-ends-in 40] [--idle-seconds 180]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
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
    sensor_ticks,
    tick_durations,
    visit,
    wait_until,
)

from assyncy_dagster.config import load_settings
from assyncy_dagster.epn import destination_for
from assyncy_dagster.names import INTERVAL_ENV
from assyncy_dagster.state import read_epns
from assyncy_dagster.transfer import SshEndpoint, transfer_command
from assyncy_dagster_demo.portal_sim import PortalSimulator
from assyncy_dagster_demo.testing.smtp_sink import SmtpSink
from assyncy_dagster_demo.testing.sshd import LocalSshd
from assyncy_dagster_demo.testing.stack import lay_out_epns, mx_frames, write_config

GOAL_LATENCY = 120.0
GOAL_REQUESTS_PER_MINUTE = 1.0
EPN = "30001a"
PROJECT = "bench"
EQUIPMENT = (23, 24)


def bare_transfer(config: Path, scratch: Path, repeats: int) -> list[float]:
    """Seconds of bare rsync of EPN into a fresh scratch folder, `repeats` times."""
    settings = load_settings(config)
    endpoint = SshEndpoint.from_settings(settings)
    seconds = []
    for i in range(repeats):
        destination = destination_for(EPN, settings.epn_cap_map, scratch / f"bare-{i}")
        argv = transfer_command(endpoint, EPN, destination, dry_run=False)
        started = time.perf_counter()
        subprocess.run(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            check=True,
            start_new_session=True,
        )
        seconds.append(time.perf_counter() - started)
        shutil.rmtree(scratch / f"bare-{i}", ignore_errors=True)
    return seconds


def stamp(epoch: float | None) -> str:
    return "-" if epoch is None else datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S.%f")[:-4]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visit-ends-in", type=float, default=40, help="seconds after the start (default 40)")
    parser.add_argument(
        "--idle-seconds", type=float, default=180, help="idle window after the EPN is home (default 180)"
    )
    parser.add_argument(
        "--timeout", type=float, default=600, help="seconds after the visit's end to wait for the EPN (default 600)"
    )
    parser.add_argument("--epn-bytes", type=int, default=1_000_000, help="bytes in the EPN (default 1 MB)")
    parser.add_argument("--files", type=int, default=21, help="files in the EPN, hidden ones included (default 21)")
    parser.add_argument("--bare-repeats", type=int, default=3, help="bare rsync runs, median taken (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (daemon log) and print it")
    args = parser.parse_args(argv)
    if args.files < 5:
        parser.error("--files must be at least 5 (mx_frames adds a log, .info and two hidden files)")

    frames = args.files - 4
    work = Path(tempfile.mkdtemp(prefix="assyncy-latency-"))
    figures: dict = {}
    problems: list[str] = []
    try:
        with LocalSshd() as sshd, SmtpSink() as smtp:
            lay_out_epns(sshd, {EPN: mx_frames(frames, args.epn_bytes // frames)})
            data = portal_data({23: [visit(300001, EPN, "now-1h", f"now+{args.visit_ends_in:g}s")], 24: []})

            def configure(portal_url: str) -> Path:
                return write_config(
                    work / "etc" / "config.yml",
                    portal_url=portal_url,
                    sshd=sshd,
                    smtp_port=smtp.port,
                    destination_root=work / "destination",
                    epn_cap_map={EPN.rstrip("abcd"): PROJECT},
                    execute=True,
                    max_tasks=2,
                    extra={"sync-frequency-hours": 1, "timezone": far_from_the_digest(), "visit-day-range": 60},
                )

            # The transfer first: the visit's end counts from the simulator's start, just before the daemon's.
            config = configure("http://127.0.0.1:9")
            bare = bare_transfer(config, work / "scratch", args.bare_repeats)
            figures["bare"] = statistics.median(bare)
            print(
                f"bare rsync of {EPN} ({args.epn_bytes} B in {args.files} files): "
                + ", ".join(f"{s:.2f}" for s in bare)
                + f" s; median {figures['bare']:.2f} s",
                flush=True,
            )

            home = fresh_dagster_home(work / "dagster_home")
            log = work / "daemon.log"
            with PortalSimulator(data) as portal:
                config = configure(portal.url)
                settings = load_settings(config)
                settings.ignore.write_text("---\npreviouslySynched: []\n")
                with dagster_daemon(home, config, log, drop_env=(INTERVAL_ENV,)) as daemon:
                    daemon_start = time.time()
                    visit_end = (portal.now + timedelta(seconds=args.visit_ends_in)).timestamp()
                    print(
                        f"daemon started {stamp(daemon_start)} UTC; the visit ends {stamp(visit_end)} UTC "
                        f"({visit_end - daemon_start:.1f} s later)",
                        flush=True,
                    )
                    home_at = wait_until(
                        lambda: EPN in read_epns(settings.ignore), visit_end - time.time() + args.timeout, daemon
                    )
                    if home_at is None:
                        problems.append(f"{EPN} not in ignore.yml {args.timeout:g} s after the visit's end")
                        print(f"--- tail of {log} ---\n{log_tail(log)}")
                    else:
                        figures["end_to_home"] = home_at - visit_end
                        if home_at < visit_end:
                            problems.append(f"{EPN} was repatriated {visit_end - home_at:.1f} s BEFORE its visit ended")
                        print(f"{EPN} in ignore.yml at {stamp(home_at)} UTC", flush=True)
                        whole = portal.stats()
                        portal.reset_stats()
                        idle_start = time.time()
                        print(f"idle for {args.idle_seconds:g} s ...", flush=True)
                        alive = wait_until(lambda: False, args.idle_seconds, daemon) is None and daemon.poll() is None
                        idle = portal.stats()
                        figures["idle_minutes"] = (time.time() - idle_start) / 60
                        if not alive:
                            problems.append("the daemon exited during the idle window")
                        figures["whole"], figures["idle"] = whole, idle
            with dg.DagsterInstance.from_config(str(home)) as instance:
                records = repatriation_runs(instance)
                ticks = sensor_ticks(instance)
                failures = failure_lines(instance, records)
                materialised = materialisations_per_epn(instance, [EPN])[EPN]
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print("== timeline (UTC) ==")
    durations = tick_durations(ticks)
    print(
        f"epn_sensor ticks: {len(ticks)} (longest {max(durations, default=float('nan')):.2f} s); "
        f"their starts: "
        + ", ".join(f"{stamp(t.timestamp)} {t.status.value}" for t in ticks[:12])
        + (" ..." if len(ticks) > 12 else "")
    )
    for r in records:
        run = r.dagster_run
        print(
            f"run {run.run_id[:8]} {run.status.value}: created {stamp(r.create_timestamp.timestamp())}, "
            f"started {stamp(r.start_time)}, ended {stamp(r.end_time)}; EPN tags "
            f"{ {k.rsplit('/', 1)[-1]: v for k, v in run.tags.items() if k.startswith('assyncy/epn/')} }"
        )
        if r.create_timestamp.timestamp() < visit_end:
            problems.append(f"run {run.run_id} was created before the visit ended")
    for line in failures:
        problems.append(f"FAILED {line}")
    if len(records) != 1:
        problems.append(f"{len(records)} repatriation runs, expected 1")
    if materialised != 1:
        problems.append(f"{materialised} epn_data materialisations of {EPN}, expected 1")
    print(f"epn_data materialisations of {EPN}: {materialised}; failure e-mails: {len(smtp.received)}")

    ok = not problems
    print()
    print("== figures ==")
    print(f"bare transfer (median):                 {figures['bare']:8.2f} s")
    if "end_to_home" in figures:
        latency = figures["end_to_home"] - figures["bare"]
        met = latency <= GOAL_LATENCY
        ok = ok and met
        if records:
            first = records[0]
            print(f"visit end -> run created:               {first.create_timestamp.timestamp() - visit_end:8.2f} s")
            if first.start_time:
                print(f"visit end -> run started:               {first.start_time - visit_end:8.2f} s")
        print(f"visit end -> EPN in ignore.yml:         {figures['end_to_home']:8.2f} s")
        print(
            f"latency minus the transfer:             {latency:8.2f} s (goal <= {GOAL_LATENCY:g}): "
            f"{'met' if met else 'MISSED'}"
        )
    else:
        ok = False
    if "idle" in figures:
        idle, minutes = figures["idle"], figures["idle_minutes"]
        rate = idle["requests"] / minutes / len(EQUIPMENT)
        met = rate <= GOAL_REQUESTS_PER_MINUTE
        ok = ok and met
        print(
            f"portal requests before idling (startup, refresh, the run): {figures['whole']['requests']} "
            f"{figures['whole']['by_path']}"
        )
        print(f"portal requests while idle {minutes:.1f} min: {idle['requests']} {idle['by_path']}")
        print(
            f"portal requests per minute per equipment while idle: {rate:6.3f} (goal <= "
            f"{GOAL_REQUESTS_PER_MINUTE:g}): {'met' if met else 'MISSED'}"
        )
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("goals met" if ok else "goal MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
