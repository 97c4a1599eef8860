"""The fixity audit's hashing against `xxhsum -c`, side by side, on the same cached 1 GiB EPN.

Builds one EPN of `--mib` MiB (128 frames of 8 MiB by default, in 8 folders) in a
temporary folder, reads it once so that both sides meet it in the page cache,
records its manifest with checksums computed by `xxhsum -H2` (Debian's xxhash,
not our code) through the transfer's own manifest writer (transfer/bag.py),
then alternates, `--rounds` times each, swapping which goes first:

- `xxhsum -c manifest-xxh128.txt` in the EPN folder (what a user runs without this tool),
- `fixity.audit_epn` with no rate bound (what the fixity_audit job runs).

Prints each run, both sides' throughput (MiB/s: min, median, max), the median of the
per-round ratios (goal >= 0.9), the CPU seconds per GiB of each side and the same
ratio by CPU time (steadier than wall time on a loaded host). Then one audit
at `--rate` MiB/s (default 100) shows the achieved rate and the CPU it used (getrusage):
the rate bound is also the CPU bound.

    .venv/bin/python benchmarks/fixity.py [--mib 1024] [--rounds 7] [--rate 100]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from side_by_side import alternate

from assyncy_dagster.fixity import audit_epn
from assyncy_dagster.transfer.bag import make_manifest, manifest_name, read_manifest
from assyncy_dagster.transfer.manifests import Entry, Kind

GOAL = 0.9
FRAME_MIB = 8
AUDIT = "fixity.audit_epn"
XXHSUM = "xxhsum -c"


def build_epn(epn_folder: Path, mib: int) -> int:
    """`mib` MiB of incompressible frames under data/; returns the bytes written."""
    frames = max(1, mib // FRAME_MIB)
    chunk = os.urandom(FRAME_MIB * 1024 * 1024)
    for i in range(frames):
        path = epn_folder / "data" / f"run_{i % 8}" / f"img_{i:05d}.cbf"
        path.parent.mkdir(parents=True, exist_ok=True)
        # Each frame different (a counter up front), so no two files hash alike.
        path.write_bytes(i.to_bytes(8, "big") + chunk[8:])
    return frames * FRAME_MIB * 1024 * 1024


def xxhsum_manifest(epn_folder: Path) -> None:
    """The manifest, with checksums from `xxhsum -H2` (the reference), made by bag.make_manifest and written."""
    data = epn_folder / "data"
    names = sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file())
    out = subprocess.run(["xxhsum", "-H2", *names], cwd=data, check=True, capture_output=True, text=True).stdout
    sums = dict(reversed(line.split("  ", 1)) for line in out.splitlines())
    tree = {}
    for name in names:
        info = (data / name).stat()
        tree[name] = Entry(Kind.FILE, info.st_size, int(info.st_mtime), checksum=sums[name])
    make_manifest(epn_folder, tree, algorithm="xxh128", info={"External-Identifier": "benchmark"}).write(epn_folder)


def cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="size of the EPN in MiB (default 1024)")
    parser.add_argument("--rounds", type=int, default=7, help="runs of each side, alternating (default 7)")
    parser.add_argument("--rate", type=float, default=100, help="MiB/s of the bounded audit (default 100)")
    args = parser.parse_args(argv)
    if not shutil.which("xxhsum"):
        print("xxhsum is not installed (apt-get install xxhash)", file=sys.stderr)
        return 2

    scratch = Path(tempfile.mkdtemp(prefix="assyncy-fixity-bench-"))
    try:
        epn_folder = scratch / "ny79" / "99997a"
        size = build_epn(epn_folder, args.mib)
        xxhsum_manifest(epn_folder)  # reads every file once more: the EPN is in the page cache now
        recorded = read_manifest(epn_folder)
        assert recorded is not None and len(recorded.tree) == size // (FRAME_MIB * 1024 * 1024)
        gib = size / 1024**3
        print(f"EPN: {len(recorded.tree)} files, {size / 1024**2:.0f} MiB in {epn_folder} (cached)")
        cpu_used: dict[str, list[float]] = {AUDIT: [], XXHSUM: []}

        def ours() -> None:
            before = cpu(resource.RUSAGE_SELF)
            audit = audit_epn(epn_folder, recorded, max_mib_per_second=None)
            cpu_used[AUDIT].append(cpu(resource.RUSAGE_SELF) - before)
            assert audit.ok and audit.verified == len(recorded.tree), audit.summary()

        def reference() -> None:
            before = cpu(resource.RUSAGE_CHILDREN)
            subprocess.run(
                ["xxhsum", "-c", "--quiet", manifest_name("xxh128")],
                cwd=epn_folder,
                check=True,
                stdout=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
            )
            cpu_used[XXHSUM].append(cpu(resource.RUSAGE_CHILDREN) - before)

        runs = [(AUDIT, ours), (XXHSUM, reference)]
        ours()  # warm-up: imports, the buffer
        cpu_used[AUDIT].clear()
        seconds = alternate(runs, args.rounds, show=lambda r, name, s: print(f"round {r}: {name:<18} {s:.3f} s"))
        print(f"hashing a cached {size / 2**20:.0f} MiB EPN, {args.rounds} rounds each (MiB/s: min / median / max):")
        for name in (AUDIT, XXHSUM):
            rates = sorted(size / 2**20 / s for s in seconds[name])
            print(
                f"  {name:<18} {rates[0]:7.0f} / {statistics.median(rates):7.0f} / {rates[-1]:7.0f} MiB/s, "
                f"CPU {statistics.median(cpu_used[name]) / gib:.2f} s per GiB"
            )
        paired = statistics.median(x / o for o, x in zip(seconds[AUDIT], seconds[XXHSUM], strict=True))
        print(
            f"  median of paired per-round throughput ratios (audit / xxhsum) {paired:.3f} "
            f"(goal >= {GOAL}): {'met' if paired >= GOAL else 'MISSED'}"
        )
        # On a loaded host a run's wall time carries other processes' turns; its CPU time does not.
        by_cpu = statistics.median(x / o for o, x in zip(cpu_used[AUDIT], cpu_used[XXHSUM], strict=True))
        print(f"  median of paired per-round CPU-time throughput ratios (audit / xxhsum) {by_cpu:.3f}")

        before_cpu, started = cpu(resource.RUSAGE_SELF), time.monotonic()
        bounded = audit_epn(epn_folder, recorded, max_mib_per_second=args.rate)
        wall, used = time.monotonic() - started, cpu(resource.RUSAGE_SELF) - before_cpu
        assert bounded.ok, bounded.summary()
        print(
            f"bounded audit at fixity-max-mib-per-second {args.rate:g}: {bounded.mib_per_second:.1f} MiB/s achieved "
            f"in {wall:.2f} s; CPU {used:.2f} s ({100 * used / wall:.1f} % of one core, {used / gib:.2f} s per GiB)"
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0 if paired >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
