"""How long PortalClient takes to fetch and merge 10,000 visits from two beamlines.

Runs the portal simulator in this process (so the peak RSS covers both ends)
and prints the seconds for authentication + fetch + parse + merge, and the
peak resident memory. Target: under 2 s.

    .venv/bin/python benchmarks/portal_visits.py [--visits 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from datetime import UTC, datetime

from visit_data import generate_visits

from assyncy_dagster.config import Equipment
from assyncy_dagster.domain import visit_window
from assyncy_dagster.portal.client import PortalClient
from assyncy_dagster_demo.portal_sim import PortalSimulator, equipment_credentials

TARGET_SECONDS = 2.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=10_000, help="visits to serve (default 10000)")
    parser.add_argument("--repeat", type=int, default=3, help="fetches to time; the best is reported (default 3)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    data = generate_visits(args.visits, (23, 24))
    equipment = [Equipment(**entry) for entry in equipment_credentials(data)]
    with PortalSimulator(data) as sim:
        load_seconds = time.perf_counter() - started
        since, until = visit_window(datetime.now(UTC), 365)
        timings = []
        for _ in range(args.repeat):
            # A fresh client each time: authentication is part of every real fetch.
            with PortalClient(sim.url, equipment, retries=0) as client:
                t0 = time.perf_counter()
                visits = client.visits(since, until)
                timings.append(time.perf_counter() - t0)
        if len(visits) != args.visits:
            print(f"expected {args.visits} visits, got {len(visits)}", file=sys.stderr)
            return 1

    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    best = min(timings)
    print(f"visits fetched and merged: {len(visits)} from {len(equipment)} equipment")
    print(f"simulator data generated and loaded: {load_seconds:.3f} s")
    print(f"fetch + parse + merge: best {best:.3f} s, runs {', '.join(f'{t:.3f}' for t in timings)} s")
    print(f"peak RSS (client and simulator): {peak_mib:.1f} MiB")
    print(f"target {TARGET_SECONDS:g} s: {'met' if best < TARGET_SECONDS else 'MISSED'}")
    return 0 if best < TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
