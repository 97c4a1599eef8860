"""`make demo`: a full watch cycle against local stand-ins of the synchrotron, then the Dagster UI.

It starts the portal simulator (etc/demo-visits.yml, plus 13001c, a visit that
ends a minute after the demo starts), a real sshd serving a small MX-like
source tree read-only, and an SMTP sink that saves what it receives; writes
demo/etc/config.yml; then evaluates `epn_sensor` and runs what it asks for,
exactly as the daemon would, in the Dagster instance at demo/dagster_home.

Then, unless `--once`, it starts `dagster dev` on 127.0.0.1 against the same
instance with the stand-ins still running and `epn_sensor` ticking every 10 s,
prints the URL, and reports each run the sensor (or the UI) starts, until
Ctrl-C stops everything. The console shows the demo's report and assyncy's log
lines; Dagster's own output goes to demo/log/dagster.log (the cycle) and
demo/log/dagster-dev.log.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

# Dagster says that features we use are in preview or beta while our assets are
# defined, i.e. on the imports below: quiet before them, so the console is the demo's.
for _category in (dg.BetaWarning, dg.PreviewWarning):
    warnings.filterwarnings("ignore", category=_category)

from assyncy_dagster.cycle import CycleReport, quiet_dagster_previews, run_cycle
from assyncy_dagster.logs import tail
from assyncy_dagster.names import ALERT_JOB, INTERVAL_ENV, REPATRIATION_JOB
from assyncy_dagster.run_records import EPN_DATA, step_failure_message, tagged_epns
from assyncy_dagster.transfer.process import stop_group

from .portal_sim import PortalSimulator
from .testing.smtp_sink import SmtpSink
from .testing.sshd import LocalSshd, _die_with_parent, missing_binaries
from .testing.stack import DEMO_VISITS, ETC, lay_out_epns, mx_frames, write_config

# The EPN whose visit is still on when the demo starts: the sensor brings it home in the UI.
LIVE_EPN = "13001c"
SENSOR_INTERVAL_SECONDS = 10

DEMO_EPNS = {
    "12282a": mx_frames(12, 256 * 1024),
    "12282b": mx_frames(8, 256 * 1024),
    "13001a": mx_frames(5, 512 * 1024),
    "13001b": mx_frames(3, 256 * 1024),
    LIVE_EPN: mx_frames(6, 256 * 1024),
    "14500a": mx_frames(2, 64 * 1024),
    "14777a": mx_frames(2, 64 * 1024),
}


class DemoError(RuntimeError):
    """The demo's UI could not start; the message says why and where Dagster's log is."""


def demo_portal_data(live_visit_seconds: float) -> dict[str, Any]:
    """etc/demo-visits.yml plus the live visit of LIVE_EPN (MX1, mapped through 13001 -> ab12),
    which ends `live_visit_seconds` after the simulator starts.

    It is added here, not in the file, because the tests share that file's six visits."""
    data = yaml.safe_load(DEMO_VISITS.read_text(encoding="utf-8"))
    mx1 = next(e for e in data["equipment"] if e["id"] == 23)
    mx1["visits"].append(
        {
            "id": 50171,
            "epn": LIVE_EPN,
            "start_time": "now-2h",
            "end_time": f"now+{live_visit_seconds:g}s",
            "principal_scientist": {
                "first_names": "Aroha",
                "last_name": "Te Whare",
                "email": "aroha.tewhare@unimelb.edu.au",
            },
            "data_scientists": [
                {"first_names": "Liam", "last_name": "O'Brien", "email": "liam.obrien@unimelb.edu.au"},
            ],
        }
    )
    return data


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _prepare_dagster_home(home: Path) -> None:
    # Fresh each time so the demo tells the same story; it stays afterwards for the UI.
    _fresh(home)
    shutil.copy(ETC / "dagster.yaml", home / "dagster.yaml")


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Send this process's standard error, and that of every process it starts, to `path`.

    A run's default console logger prints Dagster's whole event stream (DEBUG) to
    standard error, in this process and in each repatriation worker; the demo's
    console shows its own report and assyncy's log lines (on standard output) instead."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "a") as log_file:
        os.dup2(log_file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _size(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KiB"


def print_report(report: CycleReport, root: Path, mail_dir: Path, scratch: Path, *, once: bool = True) -> None:
    print("\n=== assyncy-dagster demo: one watch cycle ===")
    if report.skipped:
        print(f"sensor skipped: {report.skipped}")
    print(f"EPNs found (new partitions): {', '.join(report.new_partitions) or 'none'}")
    for outcome in report.by_job(REPATRIATION_JOB):
        if outcome.success and outcome.not_done_here:
            print(f"  {outcome.partition}: {outcome.not_done_here}")
        elif outcome.success:
            meta = outcome.metadata
            print(
                f"  transferred {outcome.partition}: {meta.get('files_transferred')} files, "
                f"{_size(int(meta.get('bytes_transferred') or 0))} -> {meta.get('destination')}"
            )
        else:
            print(f"  FAILED {outcome.partition}: {outcome.error}")
    for epn, why in report.held_back.items():
        print(f"  held back {epn}: {why}")
    for outcome in report.by_job(ALERT_JOB):
        state = "sent" if outcome.success else f"FAILED: {outcome.error}"
        print(f"  unknown-EPN alert e-mail {state}")
    mails = sorted(mail_dir.glob("*.eml"))
    print(f"data is under {scratch}; e-mails received by the SMTP sink are in {mail_dir} ({len(mails)} file(s))")
    print(f"the runs' Dagster event stream is in {root / 'log' / 'dagster.log'}")
    if once:
        print(
            "\nOpen the same instance in the Dagster UI (lineage, runs, partitions, check results):\n"
            f"  DAGSTER_HOME={root / 'dagster_home'} ASSYNCY_CONFIG={root / 'etc' / 'config.yml'} "
            f"{Path(sys.executable).parent / 'dagster'} dev -m assyncy_dagster.definitions\n"
            "(the demo's portal and SFTP stand-ins stop with this command, so new sensor ticks will skip;\n"
            " `make demo` without --once keeps them and the UI running.)"
        )


# -- the UI: dagster dev with the stand-ins still up ------------------------------------


def choose_port(preferred: int) -> int:
    """`preferred` when it is free on 127.0.0.1, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise DemoError("no free port on 127.0.0.1")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/server_info", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def dagster_dev(home: Path, config: Path, port: int, log_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """`dagster dev` on 127.0.0.1:`port` for the demo instance; yields its URL and process once it answers.

    Its output (the daemon's and the code server's lines, the runs' console logs) goes to
    `log_path`; the console gets the demo's own report. It runs in its own session, so only
    the demo decides when it stops, and always stops it with everything it started."""
    url = f"http://127.0.0.1:{port}"
    env = os.environ | {
        "DAGSTER_HOME": str(home),
        "ASSYNCY_CONFIG": str(config),
        INTERVAL_ENV: str(SENSOR_INTERVAL_SECONDS),
        "ASSYNCY_QUIET_PREVIEWS": "1",
    }
    argv = [
        str(Path(sys.executable).parent / "dagster"),
        "dev",
        "-m",
        "assyncy_dagster.definitions",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "--log-level",
        "warning",
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as out:
        # This process handles SIGINT (not SIG_IGN, which a child would inherit), so dagster
        # dev starts with SIGINT at its default and its own Ctrl-C handling works. Should the
        # demo be killed outright, the kernel sends dagster dev SIGTERM (its Ctrl-C).
        # (The preexec_fn only calls prctl and getppid, safe after a fork in a threaded process.)
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
        try:
            deadline = time.monotonic() + 120
            while not _answers(url):
                if proc.poll() is not None:
                    raise DemoError(f"dagster dev exited with status {proc.returncode}:\n{_tail(log_path)}")
                if time.monotonic() > deadline:
                    raise DemoError(f"dagster dev did not answer at {url} within 120 s:\n{_tail(log_path)}")
                time.sleep(0.5)
            yield url, proc
        finally:
            stop_group(proc, signal.SIGINT)  # as Ctrl-C in its terminal would


def _tail(path: Path) -> str:
    return f"--- {path}\n{tail(path)}"


class RunReporter:
    """Prints each run created after `since`: who started it, and what it did once it ends."""

    def __init__(self, instance: dg.DagsterInstance, since: float):
        self.instance, self.since = instance, since
        self.started: set[str] = set()
        self.ended: set[str] = set()

    def poll(self) -> None:
        records = self.instance.get_run_records(dg.RunsFilter(created_after=datetime.fromtimestamp(self.since, UTC)))
        for record in sorted(records, key=lambda r: r.create_timestamp):
            run = record.dagster_run
            if run.run_id in self.ended:
                continue
            if run.run_id not in self.started and run.status != dg.DagsterRunStatus.QUEUED:
                self.started.add(run.run_id)
                by = run.tags.get("dagster/sensor_name") or run.tags.get("dagster/schedule_name") or "the UI"
                what = ", ".join(sorted(tagged_epns(run.tags))) or run.tags.get("dagster/partition", "")
                _say(
                    f"{by} started {run.job_name} run {run.run_id[:8]}{': ' + what if what else ''}", record.start_time
                )
            if run.is_finished:
                self.ended.add(run.run_id)
                self._report_end(run, record.end_time)

    def _report_end(self, run: dg.DagsterRun, at: float | None) -> None:
        if run.status != dg.DagsterRunStatus.SUCCESS:
            events = [e.dagster_event for e in self.instance.all_logs(run.run_id) if e.dagster_event]
            why = step_failure_message(events) or run.status.value
            _say(f"run {run.run_id[:8]} ({run.job_name}) {run.status.value.lower()}: {why}", at)
            return
        materialised = self.instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=EPN_DATA), limit=50).records
        mine = [r.asset_materialization for r in materialised if r.run_id == run.run_id and r.asset_materialization]
        for event in sorted(mine, key=lambda m: m.partition or ""):
            meta: dict[str, Any] = {k: getattr(v, "value", v) for k, v in event.metadata.items()}
            _say(
                f"{event.partition} is home: {meta.get('files_transferred')} files, "
                f"{_size(int(meta.get('bytes_transferred') or 0))} -> {meta.get('destination')}",
                at,
            )
        if not mine:
            _say(f"run {run.run_id[:8]} ({run.job_name}) succeeded", at)


def _say(message: str, at: float | None = None) -> None:
    """A console line stamped with local time: `at` (a timestamp), else now."""
    print(f"{time.strftime('%H:%M:%S', time.localtime(at))} {message}", flush=True)


def keep_ui_alive(root: Path, home: Path, config: Path, port: int, live_ends: datetime) -> int:
    """Run `dagster dev` until Ctrl-C (or SIGTERM), reporting runs as they end."""
    dev_log = root / "log" / "dagster-dev.log"
    print(f"\nstarting the Dagster UI (dagster dev; its own output goes to {dev_log}) ...", flush=True)
    # The daemon may start runs before the webserver answers: report those too.
    started = time.time()
    with dg.DagsterInstance.get() as instance, dagster_dev(home, config, port, dev_log) as (url, dev):
        reporter = RunReporter(instance, started)
        wait = int((live_ends - datetime.now(UTC)).total_seconds())
        when = f"ends at {live_ends.astimezone():%H:%M:%S} (in {wait} s)" if wait > 0 else "has just ended"
        print(
            f"\nDagster UI: {url}\n"
            f"  epn_sensor ticks every {SENSOR_INTERVAL_SECONDS} s with the portal, SFTP and SMTP stand-ins up.\n"
            f"  The visit of {LIVE_EPN} {when}: watch the sensor bring it home\n"
            f"  ({url}/assets/epn_data, or Runs).\n"
            "Ctrl-C stops the UI, the sensor and the stand-ins.",
            flush=True,
        )
        try:
            while dev.poll() is None:
                reporter.poll()
                time.sleep(2)
        except KeyboardInterrupt:
            print("\nstopping dagster dev and the stand-ins ...", flush=True)
        else:
            raise DemoError(f"dagster dev stopped by itself (status {dev.returncode}):\n{_tail(dev_log)}")
    print("stopped.", flush=True)
    return 0


# -- entry point ---------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stdout
    )
    logging.getLogger("assyncy").setLevel(logging.INFO)
    quiet_dagster_previews()
    # Ctrl-C and SIGTERM unwind, so the stand-in servers and dagster dev are always stopped,
    # even when a shell started the demo in the background with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    missing = missing_binaries()
    if missing:
        print(
            f"the demo needs {', '.join(missing)}: `make demo` installs them in a checkout; elsewhere "
            "`apt-get install rsync openssh-server openssh-client`",
            file=sys.stderr,
        )
        return 2
    root = Path.cwd() / "demo"
    mail_dir = _fresh(root / "mail")
    scratch = _fresh(root / "scratch")
    etc = _fresh(root / "etc")
    home = root / "dagster_home"
    _prepare_dagster_home(home)
    shutil.rmtree(root / "log", ignore_errors=True)
    dagster_log = root / "log" / "dagster.log"

    try:
        # The SFTP stand-in keeps its tree and keys in a folder of its own under /tmp, which its
        # account can enter wherever the demo runs (a home or a private temp folder it may not).
        with (
            PortalSimulator(demo_portal_data(args.live_visit_seconds)) as portal,
            SmtpSink(save_dir=mail_dir) as smtp,
            LocalSshd() as sshd,
        ):
            lay_out_epns(sshd, DEMO_EPNS)
            config = write_config(
                etc / "config.yml",
                portal_url=portal.url,
                sshd=sshd,
                smtp_port=smtp.port,
                destination_root=scratch,
                log_dir=root / "log",
            )
            os.environ["DAGSTER_HOME"] = str(home)
            os.environ["ASSYNCY_CONFIG"] = str(config)
            with dg.DagsterInstance.get() as instance, _stderr_to(dagster_log):
                report = run_cycle(config, instance)
            print_report(report, root, mail_dir, scratch, once=args.once)
            if args.once:
                return 1 if report.failed else 0
            live_ends = portal.now + timedelta(seconds=args.live_visit_seconds)
            return keep_ui_alive(root, home, config, choose_port(args.port), live_ends)
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndemo interrupted; the stand-ins are stopped.", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    """`python -m assyncy_dagster_demo.demo [--once] ...`, the same as `assyncy demo` (options in commands.py)."""
    from assyncy_dagster.cli import main as assyncy

    return assyncy(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
