"""The stuck-EPN canary end to end: epn_sensor starts the clock, the 01:00 digest job
e-mails what is stuck, with its reason, to a real SMTP server, once a day."""

import json
import subprocess
import time
from datetime import UTC, datetime, timedelta

import dagster as dg

from assyncy_dagster.alerts.unknown_epn import SUBJECT
from assyncy_dagster.definitions import build_definitions
from assyncy_dagster.due import due_file, read_due_since
from assyncy_dagster.facts import SensorCursor
from assyncy_dagster.names import ALERT_JOB
from assyncy_dagster.refresh_failures import refresh_failure_file
from assyncy_dagster_demo.testing.stack import DEMO_EQUIPMENT
from tests.support.helpers import text_and_html, ticker


def run_digest(stack) -> dg.ExecuteInProcessResult:
    """The unknown_epn_digest schedule's run, as the daemon launches it at 01:00."""
    defs = build_definitions(str(stack.config_path))
    schedule = defs.get_schedule_def("unknown_epn_digest")
    with dg.build_schedule_context(instance=stack.instance) as context:
        [request] = schedule.evaluate_tick(context).run_requests
    return defs.resolve_job_def(ALERT_JOB).execute_in_process(run_config=request.run_config, instance=stack.instance)


def backdate(path, hours: float, *keys: str) -> None:
    """Move first sightings (due.py's map) or a failure's start `hours` into the past."""
    data = json.loads(path.read_text())
    for key in keys:
        data[key] -= hours * 3600
    path.write_text(json.dumps(data))


def test_a_stuck_epn_is_in_the_digest_once_a_day_with_its_reason_and_a_fresh_backlog_is_not(stack):
    assert not stack.materialize("12282a").success  # mapped and ended, but no folder on the host: rsync fails
    stack.lay_out("12282b")  # mapped and ended, on the host: due from this tick on
    tick, _ = ticker(stack)
    tick()
    assert set(read_due_since(stack.instance)) == {"12282a", "12282b", "13001a"}
    backdate(due_file(stack.instance), 30, "12282a", "13001a")

    assert run_digest(stack).success

    [message] = stack.smtp.wait_for(1)
    assert message["Subject"] == f"{SUBJECT}; stuck: 12282a, 13001a"
    text, html = text_and_html(message)
    assert "every EPN on the SFTP host has an owner configured" in text  # sent although none is unmapped
    [failing] = [line for line in text.splitlines() if line.startswith("- 12282a")]
    assert "(30 h): failing: 1 run(s) failed in a row; last error: EPN 12282a:" in failing and "rsync" in failing
    [missing] = [line for line in text.splitlines() if line.startswith("- 13001a")]
    assert missing.endswith("never found on the SFTP host: no folder for it under source-root")
    assert "12282b" not in text and "12282b" not in html, "a fresh backlog is not stuck"
    assert "<td>12282a</td>" in html and "<td>13001a</td>" in html

    assert run_digest(stack).success  # the same day again: nothing new to say
    time.sleep(0.2)  # the sink stores a message before it answers; nothing is on its way
    assert len(stack.smtp.messages) == 1


def test_a_refused_portal_password_is_in_the_digest_once_it_lasts_stuck_after_hours(stack):
    stack.lay_out("12282a")
    stack.configure(equipment=[{**e, "password": "not-the-password"} for e in DEMO_EQUIPMENT])
    tick, state = ticker(stack)
    assert isinstance(tick(), dg.SkipReason)
    assert SensorCursor.parse(state["cursor"]).failing_since is not None
    path = refresh_failure_file(stack.instance)
    saved = json.loads(path.read_text())
    assert (saved["what"], saved["kind"]) == ("portal", "portal authentication")
    assert "not-the-password" not in path.read_text()

    assert run_digest(stack).success
    assert stack.smtp.messages == [], "a failure younger than stuck-after-hours is not reported"
    backdate(path, 30, "since")
    assert run_digest(stack).success
    [message] = stack.smtp.wait_for(1)
    text, _ = text_and_html(message)
    [line] = [line for line in text.splitlines() if line.startswith("- portal")]
    assert "(30 h): portal authentication failing at every refresh" in line

    stack.configure(equipment=DEMO_EQUIPMENT)  # the admin sets the new password
    state["cursor"] = SensorCursor(failures=1, retry_at=time.time() - 1, failing_since=saved["since"]).dumps()
    tick()
    assert not path.exists() and SensorCursor.parse(state["cursor"]).failing_since is None


def test_a_revoked_ssh_key_is_in_the_digest_although_the_host_cannot_be_listed(stack, tmp_path):
    revoked = tmp_path / "revoked_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(revoked)], check=True)
    stack.configure(**{"key-file": str(revoked)})
    tick, _ = ticker(stack)
    assert isinstance(tick(), dg.SkipReason)
    path = refresh_failure_file(stack.instance)
    assert json.loads(path.read_text())["kind"] == "SSH authentication"
    backdate(path, 25, "since")

    assert run_digest(stack).success

    [message] = stack.smtp.wait_for(1)
    text, html = text_and_html(message)
    [line] = [line for line in text.splitlines() if line.startswith("- SFTP host")]
    assert "SSH authentication failing at every refresh" in line
    assert "Note: The SFTP host could not be listed for unmapped EPNs" in text
    assert "could not be listed" in html
    assert (
        datetime.now(UTC) - timedelta(hours=26)
        < datetime.fromtimestamp(json.loads(path.read_text())["since"], UTC)
        < datetime.now(UTC) - timedelta(hours=24)
    )
