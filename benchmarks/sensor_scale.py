"""One epn_sensor tick at scale: 10,000 visits in the portal, 10,000 EPN folders
on the SFTP host, 10,000 existing partitions, most EPNs already repatriated.

The portal simulator runs as its own process (`assyncy portal-sim`) and the SFTP
host is a real local sshd, so the peak RSS printed is the sensor's process
alone. Target: <= 3 s and <= 300 MB.

    .venv/bin/python benchmarks/sensor_scale.py [--visits 10000] [--due 100]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import yaml
from visit_data import generate_visits

from assyncy_dagster.config import load_settings
from assyncy_dagster.definitions import build_resources
from assyncy_dagster.etc_files import etc_path
from assyncy_dagster.partitions import EPN_PARTITIONS_NAME
from assyncy_dagster.tick import plan_tick
from assyncy_dagster_demo.portal_sim import equipment_credentials
from assyncy_dagster_demo.testing.sshd import LocalSshd
from assyncy_dagster_demo.testing.stack import write_config

TARGET_SECONDS = 3.0
TARGET_MB = 300


def start_portal(data_file: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "assyncy"), "portal-sim", "--visits", str(data_file), "--quiet"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    first = proc.stdout.readline()
    return proc, first.rsplit(" ", 1)[-1].strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=10_000)
    parser.add_argument("--due", type=int, default=100, help="EPNs not yet in ignore.yml (default 100)")
    args = parser.parse_args(argv)

    data = generate_visits(args.visits)
    epns = sorted({v["epn"] for e in data["equipment"] for v in e["visits"]})
    with tempfile.TemporaryDirectory(prefix="assyncy-sensor-bench-") as tmp, LocalSshd() as sshd:
        tmp_path = Path(tmp)
        data_file = tmp_path / "visits.json"
        data_file.write_text(json.dumps(data))
        beamline = sshd.beamline_dir("mx")
        for epn in epns:
            (beamline / epn).mkdir(mode=0o755)
        portal, url = start_portal(data_file)
        try:
            config = write_config(
                tmp_path / "etc" / "config.yml",
                portal_url=url,
                sshd=sshd,
                smtp_port=2525,
                destination_root=tmp_path / "scratch",
                epn_cap_map={epn.rstrip("abcd"): "proj" for epn in epns},
                template_folder=etc_path(),
                extra={"equipment": equipment_credentials(data), "visit-day-range": 200},
            )
            settings = load_settings(config)
            settings.ignore.write_text(yaml.safe_dump({"previouslySynched": epns[: len(epns) - args.due]}))
            home = tmp_path / "dagster_home"
            home.mkdir()
            os.environ["DAGSTER_HOME"] = str(home)
            os.environ["ASSYNCY_CONFIG"] = str(config)
            with dg.DagsterInstance.get() as instance:
                instance.add_dynamic_partitions(EPN_PARTITIONS_NAME, epns)
                resources = build_resources()
                rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                started = time.perf_counter()
                # What epn_sensor does in a tick: read config.yml, then gather and decide.
                tick_settings = resources["assyncy_config"].settings()
                plan, result = plan_tick(instance, tick_settings, resources["portal"], resources["sftp"], _quiet())
                seconds = time.perf_counter() - started
        finally:
            portal.terminate()
            portal.wait(10)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    requests = len(result.run_requests) if isinstance(result, dg.SensorResult) else 0
    print(f"portal visits: {args.visits}, SFTP folders: {len(epns)}, existing partitions: {len(epns)}")
    print(f"plan: {plan.summary()}; run requests: {requests}")
    print(f"sensor tick: {seconds:.3f} s (target {TARGET_SECONDS:g} s)")
    print(f"peak RSS: {peak_mb:.0f} MiB, of which {rss_before:.0f} MiB before the tick (target {TARGET_MB} MB)")
    ok = seconds <= TARGET_SECONDS and peak_mb <= TARGET_MB
    print("targets met" if ok else "target MISSED")
    return 0 if ok else 1


def _quiet():
    import logging

    logger = logging.getLogger("assyncy.bench")
    logger.setLevel(logging.WARNING)
    return logger


if __name__ == "__main__":
    sys.exit(main())
