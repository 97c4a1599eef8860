"""A no-op re-sync of 10,000 small files: RsyncClient.transfer against bare rsync, side by side.

Starts its own sshd (real OpenSSH + rrsync on 127.0.0.1), lays out one EPN of
`--files` small frames, copies it once, then alternates re-syncs that find
nothing to copy: our `RsyncClient.transfer` and `rsync` run bare with the very
same argv. Prints the seconds of each run, the medians, and the median of the
per-round ratios (each round's pair shares the machine's load). Target: <= 1.2.

    .venv/bin/python benchmarks/noop_resync.py [--files 10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from side_by_side import alternate, contenders, report

from assyncy_dagster.transfer import RsyncClient
from assyncy_dagster_demo.testing.sshd import LocalSshd, make_source_tree

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
            make_source_tree(
                sshd.beamline_dir(), EPN, {f"run_{i // 100:03d}/img_{i:05d}.cbf": 512 for i in range(args.files)}
            )
            endpoint = sshd.endpoint()
            destination = scratch / "ny79" / EPN / "data"
            first = RsyncClient(endpoint).transfer(EPN, destination, dry_run=False)
            assert first.stats is not None and first.stats.files_transferred == args.files, first.stats

            def nothing_copied(result) -> None:
                assert result.stats is not None and result.stats.files_transferred == 0, result.stats

            runs = contenders(endpoint, EPN, destination, check=nothing_copied)
            runs[1][1]()  # warm-up
            seconds = alternate(runs, args.rounds, show=lambda r, name, s: print(f"round {r}: {name:<20} {s:.3f} s"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"no-op re-sync of {args.files} files, {args.rounds} rounds, medians:")
    return report(seconds, "s", TARGET_RATIO, higher_is_better=False)


if __name__ == "__main__":
    sys.exit(main())
