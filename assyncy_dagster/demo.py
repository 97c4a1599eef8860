"""`make demo`: one full watch cycle against local stand-ins of the synchrotron.

It starts the portal simulator (etc/demo-visits.yml), a real sshd serving a
small MX-like source tree read-only, and an SMTP sink that saves what it
receives; writes demo/etc/config.yml; then evaluates `epn_sensor` and runs what
it asks for, exactly as the daemon would, in the Dagster instance at
demo/dagster_home, so the UI shows the same history afterwards.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from pathlib import Path

from dagster import DagsterInstance

from .cycle import CycleReport, quiet_dagster_previews, run_cycle
from .jobs import ALERT_JOB, REPATRIATION_JOB
from .portal_sim import PortalSimulator
from .testing.smtp_sink import SmtpSink
from .testing.sshd import LocalSshd, missing_binaries
from .testing.stack import DEMO_VISITS, ETC, lay_out_epns, mx_frames, write_config

DEMO_EPNS = {
    "12282a": mx_frames(12, 256 * 1024),
    "12282b": mx_frames(8, 256 * 1024),
    "13001a": mx_frames(5, 512 * 1024),
    "13001b": mx_frames(3, 256 * 1024),
    "14500a": mx_frames(2, 64 * 1024),
    "14777a": mx_frames(2, 64 * 1024),
}


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _prepare_dagster_home(home: Path) -> None:
    # Fresh each time so the demo tells the same story; it stays afterwards for the UI.
    _fresh(home)
    shutil.copy(ETC / "dagster.yaml", home / "dagster.yaml")


def _size(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KiB"


def print_report(report: CycleReport, root: Path, mail_dir: Path, scratch: Path) -> None:
    print("\n=== assyncy-dagster demo: one watch cycle ===")
    if report.skipped:
        print(f"sensor skipped: {report.skipped}")
    print(f"EPNs found (new partitions): {', '.join(report.new_partitions) or 'none'}")
    for outcome in report.by_job(REPATRIATION_JOB):
        if outcome.success:
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
    print(
        "\nOpen the same instance in the Dagster UI (lineage, runs, partitions, check results):\n"
        f"  DAGSTER_HOME={root / 'dagster_home'} ASSYNCY_CONFIG={root / 'etc' / 'config.yml'} "
        ".venv/bin/dagster dev -m assyncy_dagster.definitions\n"
        "(the demo's portal and SFTP stand-ins stop with this command, so new sensor ticks will skip.)"
    )


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("assyncy").setLevel(logging.INFO)
    quiet_dagster_previews()
    # SIGTERM unwinds like Ctrl-C, so the stand-in servers are always stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    missing = missing_binaries()
    if missing:
        print(f"the demo needs {', '.join(missing)}: run `make demo`, which installs them", file=sys.stderr)
        return 2
    root = Path.cwd() / "demo"
    mail_dir = _fresh(root / "mail")
    scratch = _fresh(root / "scratch")
    etc = _fresh(root / "etc")
    home = root / "dagster_home"
    _prepare_dagster_home(home)
    shutil.rmtree(root / "sshd", ignore_errors=True)

    with PortalSimulator(DEMO_VISITS) as portal, SmtpSink(save_dir=mail_dir) as smtp, LocalSshd(
        workdir=root / "sshd"
    ) as sshd:
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
        with DagsterInstance.get() as instance:
            report = run_cycle(config, instance)
        print_report(report, root, mail_dir, scratch)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
