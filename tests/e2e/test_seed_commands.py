"""mxsync and epnalert: the old tool's commands, same options, same meaning."""

import signal
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from assyncy_dagster.run_records import tagged_epns
from tests.support.helpers import BIN, command, live_processes_mentioning, running, transfer_started, wait_for

pytestmark = pytest.mark.slow

DUE = ["12282a", "12282b", "13001a"]  # mapped and ended; 13001b is still running; 14500a/14777a unmapped


def test_mxsync_once_execute_repatriates_exactly_the_due_epns(stack):
    stack.lay_out("12282a", "12282b", "13001a", "13001b", "14500a", "14777a")
    result = command("mxsync", "--config", str(stack.config_path), "--once", "--execute")
    assert result.returncode == 0, result.stderr[-3000:]
    assert stack.ignored() == DUE
    assert (stack.destination("ny79", "12282b") / "frames" / "img_0003.cbf").is_file()
    assert not stack.destination("ab12", "13001b").exists()
    assert stack.smtp.messages == [], "alerts are epnalert's job, as before"
    with dg.DagsterInstance.get() as instance:  # DAGSTER_HOME is set: the runs show in the UI
        runs = instance.get_runs(dg.RunsFilter(job_name="repatriate_epn"))
        outcomes = {epn: o for r in runs for epn, o in tagged_epns(r.tags).items()}
        assert outcomes == dict.fromkeys(DUE, "home")
        assert len(runs) < len(DUE), "one batch per rsync slot, not one run per EPN"
        for epn in DUE:  # and still each EPN's own record
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("epn_data"), asset_partitions=[epn]), limit=1
            ).records
            assert records and records[0].asset_materialization.partition == epn


def test_mxsync_without_execute_is_a_dry_run_that_writes_nothing(stack):
    stack.lay_out("12282a")
    result = command("mxsync", "--config", str(stack.config_path), "--once")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not any(stack.destination_root.rglob("*/*")), "nothing inside the (pre-existing) project folders"
    assert stack.ignored() == []


def test_mxsync_once_fails_listing_the_epns_that_failed(stack):
    stack.lay_out("12282a", "12282b")
    (stack.source / "12282b" / "frames" / "img_0001.cbf").chmod(0o600)  # unreadable by the SFTP account
    result = command("mxsync", "--config", str(stack.config_path), "--once", "--execute")
    assert result.returncode != 0
    assert "12282b" in result.stderr and "12282a" not in result.stderr.split("failed:")[-1]
    assert stack.ignored() == ["12282a"]


def test_sigterm_stops_transfers_cleanly_and_a_later_cycle_completes(stack):
    stack.configure(**{"rsync-bwlimit-kib": 1024, "max-tasks": 1})
    stack.lay_out("12282a", frames=4, size=2 * 1024 * 1024)
    dest = stack.destination("ny79", "12282a")
    mxsync = [str(BIN / "mxsync"), "--config", str(stack.config_path), "--execute"]
    with running(mxsync, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        wait_for(lambda: transfer_started(dest), 120, "the transfer to start", proc=proc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    wait_for(lambda: not live_processes_mentioning(str(dest)), 10, "rsync and ssh to end")
    assert stack.ignored() == [], "nothing unverified is recorded"

    stack.configure(**{"rsync-bwlimit-kib": None})
    again = command("mxsync", "--config", str(stack.config_path), "--once", "--execute")
    assert again.returncode == 0, again.stderr[-3000:]
    assert stack.ignored() == ["12282a"]
    for frame in (stack.source / "12282a" / "frames").glob("*.cbf"):
        assert (dest / "frames" / frame.name).read_bytes() == frame.read_bytes()


def test_epnalert_sends_one_digest_of_the_unmapped_epns(stack):
    stack.lay_out("12282a", "14500a", "14777a")
    result = command("epnalert", "--config", str(stack.config_path))
    assert result.returncode == 0, result.stderr
    [message] = stack.smtp.wait_for(1)
    assert message["Subject"] == "Unknown ownership of EPNs"
    text = message.get_body(("plain",)).get_content()
    assert "14500a" in text and "14777a" in text and "12282a" not in text


def test_epnalert_fails_clearly_when_the_smtp_server_is_down(stack):
    stack.lay_out("14500a")
    stack.configure(**{"epnalert-email-smtp": "127.0.0.1:1"})
    result = command("epnalert", "--config", str(stack.config_path))
    assert result.returncode != 0
    assert "127.0.0.1:1" in result.stderr


def test_log_files_follow_log_level_and_hold_no_secret(stack):
    stack.configure(**{"log-level": "logging.DEBUG"})
    stack.lay_out("12282a", "14500a")
    assert command("mxsync", "--config", str(stack.config_path), "--once", "--execute").returncode == 0
    assert command("epnalert", "--config", str(stack.config_path)).returncode == 0
    logs = stack.settings().log_files
    sync, epnalert, email = (Path(p).read_text() for p in (logs.sync, logs.epnalert, logs.email))
    assert "DEBUG" in sync and "12282a" in sync
    assert "14500a" in epnalert
    assert "Unknown ownership of EPNs" in email or "14500a" in email
    tokens = stack.portal.issued_tokens()
    assert tokens, "the portal was used"
    for text in (sync, epnalert, email):
        for secret in ("demo-password", "demo-client-password", *tokens):
            assert secret not in text
