"""Ours against bare rsync, alternating, for the transfer benchmarks.

Each round runs both ways of copying, swapping which goes first every round,
so that neither side always meets a warm or a cold machine. The per-round
ratio compares two runs that shared the machine's load of the moment, which
is steadier on a busy 2-core host than a ratio of medians.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable

from assyncy_dagster.transfer import RsyncClient, SshEndpoint, transfer_command

OURS = "RsyncClient.transfer"
BARE = "bare rsync"


def contenders(endpoint: SshEndpoint, epn: str, destination, check: Callable | None = None):
    """The two ways to copy `epn`: the code epn_data runs, and rsync with the very same argv."""
    client = RsyncClient(endpoint)
    bare_argv = transfer_command(endpoint, epn, destination, dry_run=False)

    def ours() -> None:
        result = client.transfer(epn, destination, dry_run=False, on_progress=lambda update: None)
        if check:
            check(result)

    def bare() -> None:
        subprocess.run(
            bare_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, check=True
        )

    return [(OURS, ours), (BARE, bare)]


def alternate(
    runs,
    rounds: int,
    *,
    before_each: Callable[[], None] = lambda: None,
    show: Callable[[int, str, float], None] = lambda round_, name, seconds: None,
) -> dict[str, list[float]]:
    """Seconds of each run, by name, over `rounds` alternating rounds."""
    seconds: dict[str, list[float]] = {name: [] for name, _ in runs}
    for round_ in range(rounds):
        for name, run in runs if round_ % 2 == 0 else runs[::-1]:
            before_each()
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
            show(round_ + 1, name, seconds[name][-1])
    return seconds


def report(values: dict[str, list[float]], unit: str, target: float, higher_is_better: bool) -> int:
    """Print medians and ratios of OURS to BARE; exit status 0 when the paired ratio meets `target`."""
    ours, bare = statistics.median(values[OURS]), statistics.median(values[BARE])
    paired = statistics.median(o / b for o, b in zip(values[OURS], values[BARE], strict=True))
    met = paired >= target if higher_is_better else paired <= target
    print(f"  {OURS} {ours:8.3f} {unit}")
    print(f"  {BARE}          {bare:8.3f} {unit}")
    print(f"  ratio of medians {ours / bare:.3f}")
    print(
        f"  median of paired per-round ratios {paired:.3f} (target {'>=' if higher_is_better else '<='} "
        f"{target}): {'met' if met else 'MISSED'}"
    )
    return 0 if met else 1
