"""`assyncy portal-sim` and `python -m assyncy_dagster_demo.portal_sim`: serve the simulator until
SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from assyncy_dagster.etc_files import etc_path

from .data import SimulatorDataError
from .simulator import PortalSimulator


def add_portal_sim_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `assyncy portal-sim`."""
    parser.add_argument(
        "--visits",
        default=etc_path("demo-visits.yml"),
        metavar="FILE",
        help="YAML or JSON file of equipment accounts and visits (default: the demo's, etc/demo-visits.yml)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=0, help="port to listen on (default 0: any free port, printed at start)"
    )
    parser.add_argument(
        "--token-ttl",
        type=float,
        default=None,
        metavar="S",
        help="seconds an access token stays valid (default: the file's token-ttl-seconds, else 3600)",
    )
    parser.add_argument(
        "--fail-first", type=int, default=0, metavar="N", help="answer the first N API requests with --fail-status"
    )
    parser.add_argument(
        "--fail-status", type=int, default=500, metavar="CODE", help="HTTP status of injected failures (default 500)"
    )
    parser.add_argument(
        "--delay", type=float, default=0.0, metavar="S", help="wait S seconds before answering each API request"
    )
    parser.add_argument("--quiet", action="store_true", help="do not log each request to stderr")
    return parser


def serve_forever(args: argparse.Namespace) -> None:
    """Serve until SIGINT or SIGTERM; prints `portal simulator listening on URL` first."""
    simulator = PortalSimulator(
        args.visits,
        host=args.host,
        port=args.port,
        token_ttl=args.token_ttl,
        fail_first=args.fail_first,
        fail_status=args.fail_status,
        delay=args.delay,
        quiet=getattr(args, "quiet", False),
    )
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        # Set both explicitly: a shell that started us in the background may have left SIGINT ignored.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
    with simulator:
        print(f"portal simulator listening on {simulator.url}", flush=True)
        summary = ", ".join(f"equipment {e.id}: {len(e.visits)} visits" for e in simulator.equipment.values())
        print(f"{summary}; relative times count from {simulator.now.isoformat()}", flush=True)
        print("faults: POST /_sim/faults, POST /_sim/expire-tokens, GET /_sim/stats", flush=True)
        while not stop.wait(0.5):
            pass
    print("portal simulator stopped", flush=True)


def run_portal_sim(args: argparse.Namespace) -> int:
    """`assyncy portal-sim`: 0 after a clean stop, 2 when the data file or address is unusable."""
    try:
        serve_forever(args)
    except SimulatorDataError as exc:
        print(f"portal-sim: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"portal-sim: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_portal_sim_arguments(
        argparse.ArgumentParser(prog="portal-sim", description="Simulate the Australian Synchrotron portal API.")
    )
    return run_portal_sim(parser.parse_args(argv))
