"""One repatriation run in a process of its own (see `cycle.Workers`)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import asdict

import dagster as dg

from .cycle import WORKER_RESULT_PREFIX, RunOutcome, execute_request, quiet_dagster_previews
from .definitions import build_definitions
from .run_configs import batch_epns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m assyncy_dagster.worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--run-config", default="{}")
    parser.add_argument("--tags", default="{}")
    parser.add_argument("--run-id", required=True)
    args = parser.parse_args(argv)
    if os.environ.get("ASSYNCY_QUIET_PREVIEWS"):
        quiet_dagster_previews()
    # mxsync's SIGTERM interrupts the run like Ctrl-C (Dagster's own handler takes
    # over once the run starts): rsync's process group is killed and the run ends
    # as failed, never as repatriated.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    request = dg.RunRequest(job_name=args.job, run_config=json.loads(args.run_config), tags=json.loads(args.tags))
    epns = batch_epns(request.run_config)
    with dg.DagsterInstance.get() as instance:
        try:
            outcomes = execute_request(build_definitions(args.config), instance, request, run_id=args.run_id)
        except KeyboardInterrupt:
            outcomes = [RunOutcome(args.job, epn, args.run_id, False, "interrupted") for epn in epns]
    print(WORKER_RESULT_PREFIX + json.dumps([asdict(o) for o in outcomes], default=str), flush=True)
    return 0 if all(o.success for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
