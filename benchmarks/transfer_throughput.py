"""Throughput of RsyncClient.transfer (the code epn_data runs) against bare rsync, side by side.

Starts its own sshd (real OpenSSH + rrsync on 127.0.0.1), lays out one EPN of
`--size-mib` MiB in `--files` frames, then alternates the two ways of copying
it into a fresh destination: our `RsyncClient.transfer` (progress parsing,
process-group handling) and `rsync` run bare with the very same argv. Prints
MiB/s of each run, the medians, and the median of the per-round ratios
(each round's pair shares the machine's load of the moment). Target: >= 0.97.

    .venv/bin/python benchmarks/transfer_throughput.py [--size-mib 1024] [--files 64] [--rounds 5]
        [--scratch /dev/shm]

Single runs vary by +-30% on a shared 2-core machine; trust the medians of
the alternating rounds, not one pair.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from side_by_side import alternate, contenders, report

from assyncy_dagster_demo.testing.sshd import LocalSshd, make_source_tree

TARGET_RATIO = 0.97
EPN = "99999a"


def fresh(destination: Path) -> None:
    shutil.rmtree(destination, ignore_errors=True)
    os.sync()  # the last run's writeback must not slow the next one


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="EPN size in MiB (default 1024)")
    parser.add_argument("--files", type=int, default=64, help="number of frames (default 64)")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each, alternating order (default 5)")
    parser.add_argument(
        "--scratch",
        type=Path,
        default=None,
        help="where the destination goes (default: a temp dir; /dev/shm takes disk writeback "
        "out of the comparison on a noisy machine)",
    )
    args = parser.parse_args(argv)

    total = args.size_mib << 20
    per_file = total // args.files
    scratch = Path(tempfile.mkdtemp(prefix="assyncy-bench-", dir=args.scratch))
    try:
        with LocalSshd() as sshd:
            make_source_tree(sshd.beamline_dir(), EPN, {f"frames/img_{i:05d}.cbf": per_file for i in range(args.files)})
            destination = scratch / "ny79" / EPN / "data"
            runs = contenders(sshd.endpoint(), EPN, destination)
            fresh(destination)
            runs[1][1]()  # warm-up: source pages cached, ssh and disk paths exercised

            def show(round_: int, name: str, seconds: float) -> None:
                print(f"round {round_}: {name:<20} {total / (1 << 20) / seconds:8.1f} MiB/s ({seconds:.2f} s)")

            seconds = alternate(runs, args.rounds, before_each=lambda: fresh(destination), show=show)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    rates = {name: [total / (1 << 20) / s for s in values] for name, values in seconds.items()}
    print(f"EPN of {args.size_mib} MiB in {args.files} files into {scratch.parent}, {args.rounds} rounds, medians:")
    return report(rates, "MiB/s", TARGET_RATIO, higher_is_better=True)


if __name__ == "__main__":
    sys.exit(main())
