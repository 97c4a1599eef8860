"""The subcommands this distribution adds to `assyncy` (entry point group `assyncy_dagster.commands`):
each function takes `assyncy`'s subparsers and adds one."""

from __future__ import annotations

import argparse
from typing import Any


def add_demo(commands: Any) -> None:
    """`assyncy demo`: one watch cycle against the stand-ins, then the Dagster UI (make demo)."""
    demo = commands.add_parser(
        "demo", help="run against local stand-ins of the synchrotron, then keep the Dagster UI up (make demo)"
    )
    demo.add_argument("--once", action="store_true", help="run one watch cycle and exit (tests, CI)")
    demo.add_argument(
        "--port",
        type=int,
        default=3000,
        help="port of the Dagster UI on 127.0.0.1 (default 3000, or a free one when it is taken)",
    )
    demo.add_argument(
        "--live-visit-seconds",
        type=float,
        default=60,
        metavar="S",
        help="the live visit (13001c) ends S seconds after the demo starts (default 60)",
    )
    demo.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run  # the stand-ins load only when the demo runs

    return run(args)


def add_portal_sim(commands: Any) -> None:
    """`assyncy portal-sim`: serve a simulated synchrotron portal over HTTP."""
    from .portal_sim import add_portal_sim_arguments, run_portal_sim

    sim = commands.add_parser("portal-sim", help="serve a simulated synchrotron portal over HTTP")
    add_portal_sim_arguments(sim)
    sim.set_defaults(func=run_portal_sim)
