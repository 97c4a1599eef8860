"""One large EPN over a link capped per connection: `transfer-streams: 4` against one stream, alternating.

A WAN link usually caps each flow; here the local sshd's forced command relays
each ssh connection's data at `--cap` MiB/s (rate_relay.py), so one rsync is
held to the cap and N streams get N caps. The EPN is `--mib` MiB in 64 files
across 8 folders. Both sides run `dagster asset materialize` of the same
partition into an emptied destination, with config.yml's `transfer-streams`
1 or 4 (`transfer-streams-min-mib: 0`); the step's time is read from the
event log (STEP_START -> STEP_SUCCESS), so the streams' source listing counts.
Goal: the median per-round speed-up (one stream / four) >= 1.5, with the copies the same:
after every run the destination is compared entry by entry (testing/copies.py: type,
mode with setgid, mtime, bytes, link targets, empty folders) with the first one-stream
copy, and a run whose copy differs fails the benchmark. The EPN holds a symlink and an
empty folder, which `--files-from` alone would not bring.

    .venv/bin/python benchmarks/streams.py [--rounds 3] [--cap 40] [--mib 512]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import dagster as dg
from daemon_bench import fresh_dagster_home, portal_data, visit
from step_overhead import materialize

from assyncy_dagster.config import load_settings
from assyncy_dagster.epn import destination_for
from assyncy_dagster_demo.portal_sim import PortalSimulator
from assyncy_dagster_demo.testing.copies import copy_entries
from assyncy_dagster_demo.testing.smtp_sink import SmtpSink
from assyncy_dagster_demo.testing.sshd import LocalSshd
from assyncy_dagster_demo.testing.stack import lay_out_epns, write_config

EPN = "31001a"
PROJECT = "bench"
GOAL = 1.5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both sides, alternating (default 3)")
    parser.add_argument("--cap", type=float, default=40, help="MiB/s per ssh connection (default 40)")
    parser.add_argument("--mib", type=int, default=512, help="size of the EPN in MiB (default 512)")
    parser.add_argument("--streams", type=int, default=4, help="streams of the parallel side (default 4)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="assyncy-streams-"))
    seconds: dict[int, list[float]] = {1: [], args.streams: []}
    try:
        with (
            LocalSshd(rate_limit_mib=args.cap) as sshd,
            SmtpSink() as smtp,
            PortalSimulator(portal_data({23: [visit(310001, EPN, "now-3d", "now-2d")], 24: []})) as portal,
        ):
            size = args.mib * (1 << 20) // 64
            source = lay_out_epns(sshd, {EPN: {f"run_{i // 8}/img_{i:03d}.h5": size for i in range(64)}}) / EPN
            os.symlink("run_0/img_000.h5", source / "first.h5")
            (source / "run_7" / "empty").mkdir()
            home = fresh_dagster_home(work / "dagster_home")
            with dg.DagsterInstance.from_config(str(home)) as instance:
                instance.add_dynamic_partitions("epn", [EPN])

            def config_for(streams: int) -> Path:
                return write_config(
                    work / f"etc-{streams}" / "config.yml",
                    portal_url=portal.url,
                    sshd=sshd,
                    smtp_port=smtp.port,
                    destination_root=work / "destination",
                    epn_cap_map={"31001": PROJECT},
                    execute=True,
                    extra={"transfer-streams": streams, "transfer-streams-min-mib": 0},
                )

            configs = {n: config_for(n) for n in seconds}
            settings = load_settings(configs[1])
            destination = destination_for(EPN, settings.epn_cap_map, settings.destination_root_path)
            print(
                f"{args.mib} MiB in 64 files over 8 folders, each ssh connection capped at {args.cap:g} MiB/s; "
                f"{args.rounds} round(s)",
                flush=True,
            )
            reference: dict | None = None
            differing: list[str] = []
            for round_ in range(args.rounds):
                order = list(seconds) if round_ % 2 == 0 else list(seconds)[::-1]
                for streams in order:
                    shutil.rmtree(destination.parent, ignore_errors=True)
                    for config in configs.values():
                        load_settings(config).ignore.write_text("---\npreviouslySynched: []\n")
                    os.sync()
                    seconds[streams].append(materialize(home, configs[streams], EPN, work)["step"])
                    copy = copy_entries(destination)
                    reference = reference if reference is not None or streams != 1 else copy
                    same = reference is None or copy == reference
                    if not same:
                        differing.append(f"round {round_ + 1}, {streams} stream(s)")
                    print(
                        f"round {round_ + 1}: {streams} stream(s) {seconds[streams][-1]:7.2f} s "
                        f"({args.mib / seconds[streams][-1]:.1f} MiB/s); {len(copy)} entries, "
                        f"{'the same copy as one stream makes' if same else 'NOT the copy one stream makes'}",
                        flush=True,
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    many = args.streams
    speedups = [one / par for one, par in zip(seconds[1], seconds[many], strict=True)]
    speedup = statistics.median(speedups)
    print(f"\none stream  {statistics.median(seconds[1]):7.2f} s (median)")
    print(f"{many} streams   {statistics.median(seconds[many]):7.2f} s (median)")
    print(
        f"speed-up, median of per-round ratios: {speedup:.2f} (goal >= {GOAL}): "
        f"{'met' if speedup >= GOAL else 'MISSED'}; per round {', '.join(f'{s:.2f}' for s in speedups)}"
    )
    verdict = "all the same" if not differing else "DIFFERENT: " + "; ".join(differing)
    print(f"copies compared entry by entry: {verdict}")
    return 0 if speedup >= GOAL and not differing else 1


if __name__ == "__main__":
    sys.exit(main())
