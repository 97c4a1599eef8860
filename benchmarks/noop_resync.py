"""A no-op re-sync of 10,000 small files: SftpClient.transfer against bare rsync, side by side.

Starts its own sshd (real OpenSSH + rrsync on 127.0.0.1), lays out one EPN of
`--files` small frames, copies it once, then alternates re-syncs that find
nothing to copy: our `SftpClient.transfer` and `rsync` run bare with the very
same argv. Prints the seconds of each run, the medians, and the median of the
per-round ratios (each round's pair shares the machine's load). Target: <= 1.2.

    .venv/bin/python benchmarks/noop_resync.py [--files 10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from assyncy_dagster.rsync import SftpClient, transfer_command
from assyncy_dagster.testing.sshd import LocalSshd, make_source_tree

TARGET_RATIO = 1.2
EPN = "99998a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000, help="number of small files (default 10000)")
    parser.add_argument("--rounds", type=int, default=5, help="re-syncs of each, alternating order (default 5)")
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="assyncy-bench-"))
    try:
        with LocalSshd() as sshd:
            # 100 files per folder, like frames split into runs.
            make_source_tree(sshd.beamline_dir(), EPN,
                             {f"run_{i // 100:03d}/img_{i:05d}.cbf": 512 for i in range(args.files)})
            endpoint = sshd.endpoint()
            client = SftpClient(endpoint)
            destination = scratch / "ny79" / EPN / "data"
            bare_argv = transfer_command(endpoint, EPN, destination, dry_run=False)
            first = client.transfer(EPN, destination, dry_run=False)
            assert first.stats is not None and first.stats.files_transferred == args.files, first.stats

            def ours() -> None:
                result = client.transfer(EPN, destination, dry_run=False, on_progress=lambda update: None)
                assert result.stats is not None and result.stats.files_transferred == 0, result.stats

            def bare() -> None:
                subprocess.run(bare_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               stdin=subprocess.DEVNULL, check=True)

            bare()  # warm-up
            timings: dict[str, list[float]] = {"SftpClient.transfer": [], "bare rsync": []}
            runs = [("SftpClient.transfer", ours), ("bare rsync", bare)]
            for round_ in range(args.rounds):
                for name, run in runs if round_ % 2 == 0 else runs[::-1]:
                    started = time.perf_counter()
                    run()
                    timings[name].append(time.perf_counter() - started)
                    print(f"round {round_ + 1}: {name:<20} {timings[name][-1]:.3f} s")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    ours_s = statistics.median(timings["SftpClient.transfer"])
    bare_s = statistics.median(timings["bare rsync"])
    # Each round's two runs share the machine's load of the moment; their ratio cancels it.
    paired = statistics.median(o / b for o, b in zip(timings["SftpClient.transfer"], timings["bare rsync"], strict=True))
    print(f"no-op re-sync of {args.files} files, {args.rounds} rounds, medians:")
    print(f"  SftpClient.transfer {ours_s:.3f} s")
    print(f"  bare rsync          {bare_s:.3f} s")
    print(f"  ratio of medians {ours_s / bare_s:.3f}")
    print(f"  median of paired per-round ratios {paired:.3f} (target <= {TARGET_RATIO}): "
          f"{'met' if paired <= TARGET_RATIO else 'MISSED'}")
    return 0 if paired <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
