"""One data mover against two: the same backlog through Celery workers, in the same run.

The set-up of tests/e2e/test_scale_out.py: PostgreSQL storage, Redis as the Celery broker
and result backend, the real `dagster-daemon` (etc/scale-out/dagster.yaml with the
database's address filled in), and Celery workers started with
assyncy-celery-worker.service's own command line, each with its own DAGSTER_HOME and,
where the kernel allows, its own host name. Every side of every round gets a fresh
database, destination and ignore.yml; the SFTP host (a real sshd with rrsync), the
portal simulator and Redis are shared.

A backlog of `--epns` due EPNs of `--epn-bytes` each (visits ended two days ago, all
mapped) goes home once with one worker and once with two, alternating which goes
first (round 1: one worker first). Each worker runs `--concurrency` runs at once and
max-tasks is workers x concurrency, as README "Scaling out" sizes it: the second
worker is a second host's worth of transfers. `--bwlimit-kib` caps each rsync
(rsync-bwlimit-kib), as a WAN link caps each stream.

Wall time: from starting the workers and the daemon until every EPN is in ignore.yml;
"after ready" leaves out the workers' start-up.

    .venv/bin/python benchmarks/scale_out.py [--epns 48] [--rounds 2] [--concurrency 2] [--bwlimit-kib N]
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from daemon_bench import far_from_the_digest, portal_data, repatriation_runs, run_status_counts, visit

from assyncy_dagster.config import load_settings
from assyncy_dagster.state import read_epns
from assyncy_dagster_demo.portal_sim import PortalSimulator
from assyncy_dagster_demo.testing.postgres import local_postgres
from assyncy_dagster_demo.testing.redis_server import LocalRedis
from assyncy_dagster_demo.testing.scale_out import Site, own_host_names_work, running_site
from assyncy_dagster_demo.testing.smtp_sink import SmtpSink
from assyncy_dagster_demo.testing.sshd import LocalSshd
from assyncy_dagster_demo.testing.stack import lay_out_epns, mx_frames, write_config

PROJECT = "bench"
_databases = itertools.count(1)


def one_side(
    work: Path, args, base_config: dict, database, broker_url: str, epns: list[str], workers: int, own_hosts: bool
) -> dict:
    """The backlog through `workers` Celery workers on a fresh database; wall seconds and what ran where."""
    folder = Path(tempfile.mkdtemp(prefix=f"{workers}w-", dir=work))
    extra = {"timezone": far_from_the_digest(), "max-epns-per-run": args.max_epns_per_run}
    if args.bwlimit_kib:
        extra["rsync-bwlimit-kib"] = args.bwlimit_kib
    config = write_config(
        folder / "etc" / "config.yml",
        destination_root=folder / "destination",
        max_tasks=workers * args.concurrency,
        extra=extra,
        **base_config,
    )
    settings = load_settings(config)
    wanted = set(epns)
    db = database.create_database(f"bench_{next(_databases)}")
    result: dict = {"workers": workers, "max_tasks": workers * args.concurrency}
    started = time.monotonic()
    with running_site(
        folder,
        db,
        broker_url,
        config,
        workers=workers,
        concurrency=args.concurrency,
        own_hosts=own_hosts,
        sensor_interval=args.sensor_interval,
        poll_interval_seconds=10,
    ) as site:
        ready = time.monotonic()
        deadline = ready + args.timeout
        while not wanted <= read_epns(settings.ignore) and time.monotonic() < deadline:
            if not site.daemon.alive() or not all(w.alive() for w in site.workers):
                print(site.problems())
                break
            time.sleep(0.25)
        done = time.monotonic()
        result["home"] = len(wanted & read_epns(settings.ignore))
        result["seconds"] = done - started if result["home"] == len(wanted) else None
        result["after_ready"] = done - ready if result["home"] == len(wanted) else None
        records = repatriation_runs(site.instance)
        result["runs"] = len(records)
        result["statuses"] = dict(run_status_counts(records))
        result["per_worker"] = _runs_per_worker(site, records)
    shutil.rmtree(folder, ignore_errors=True)  # keep the disk small between rounds
    return result


def _runs_per_worker(site: Site, records: list) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        worker = site.worker_of_task(record.dagster_run.tags.get("dagster-celery/task_id", "?"))
        name = worker.name if worker else "?"
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epns", type=int, default=48, help="due EPNs (default 48)")
    parser.add_argument("--epn-bytes", type=int, default=1_000_000, help="bytes per EPN (default 1 MB)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of both sides, alternating order (default 2)")
    parser.add_argument("--concurrency", type=int, default=2, help="runs per worker at once (default 2)")
    parser.add_argument("--max-epns-per-run", type=int, default=50, help="config's max-epns-per-run (default 50)")
    parser.add_argument("--bwlimit-kib", type=int, default=0, help="rsync-bwlimit-kib per transfer (default none)")
    parser.add_argument("--sensor-interval", type=int, default=5, help="epn_sensor's tick in seconds (default 5)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a side may take (default 900)")
    args = parser.parse_args(argv)

    epns = [f"{30000 + i}a" for i in range(args.epns)]
    frames = 4
    own_hosts = own_host_names_work()
    work = Path(tempfile.mkdtemp(prefix="assyncy-scale-out-"))
    results: dict[int, list[dict]] = {1: [], 2: []}
    try:
        with (
            LocalSshd() as sshd,
            SmtpSink() as smtp,
            LocalRedis() as redis,
            local_postgres() as database,
            PortalSimulator(
                portal_data({23: [visit(100000 + i, epn, "now-3d", "now-2d") for i, epn in enumerate(epns)], 24: []})
            ) as portal,
        ):
            lay_out_epns(sshd, {epn: mx_frames(frames, args.epn_bytes // frames) for epn in epns})
            base_config = {
                "portal_url": portal.url,
                "sshd": sshd,
                "smtp_port": smtp.port,
                "epn_cap_map": {epn.rstrip("a"): PROJECT for epn in epns},
                "execute": True,
            }
            print(
                f"{args.epns} EPNs of {args.epn_bytes} bytes; --concurrency={args.concurrency} per worker, "
                f"max-tasks = workers x {args.concurrency}; max-epns-per-run {args.max_epns_per_run}; "
                f"rsync-bwlimit-kib {args.bwlimit_kib or 'none'}; {args.rounds} round(s); "
                f"{'a host name per worker' if own_hosts else 'workers share the host name'}",
                flush=True,
            )
            for round_ in range(args.rounds):
                for workers in (1, 2) if round_ % 2 == 0 else (2, 1):
                    result = one_side(
                        work, args, base_config, database, redis.url(round_ % 16), epns, workers, own_hosts
                    )
                    results[workers].append(result)
                    shown = (
                        "TIMED OUT"
                        if result["seconds"] is None
                        else (f"{result['seconds']:6.1f} s ({result['after_ready']:6.1f} s after ready)")
                    )
                    print(
                        f"round {round_ + 1}: {workers} worker(s), max-tasks {result['max_tasks']}: {shown}; "
                        f"{result['home']}/{args.epns} home, {result['runs']} runs {result['statuses']}, "
                        f"per worker {result['per_worker']}",
                        flush=True,
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    ok = True
    for workers in (1, 2):
        times = [r["seconds"] for r in results[workers] if r["seconds"] is not None]
        ready = [r["after_ready"] for r in results[workers] if r["after_ready"] is not None]
        if len(times) != len(results[workers]) or not times:
            print(f"{workers} worker(s): did not finish in every round")
            ok = False
            continue
        print(
            f"{workers} worker(s): median {statistics.median(times):6.1f} s "
            f"({statistics.median(ready):6.1f} s after ready) over {len(times)} round(s): "
            + ", ".join(f"{t:.1f}" for t in times)
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
