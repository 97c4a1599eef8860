"""A small full path with distinctive secrets in config.yml, then a scan of everything
it left behind for those secrets.

The path: sensor ticks (DEBUG logging), a repatriation in a worker process, an
unknown-EPN alert over an SMTP login, a failed repatriation and its failure
e-mail, a portal answering 500 and an expired token (401, re-authentication).
The scan: every log file, the Dagster event log of every run, run configs and
tags, materialisation and check metadata, every file under DAGSTER_HOME (compute
logs, the raw SQLite files), the e-mails sent. None may hold a portal password,
a client password, the SMTP password, an access token the portal issued, or a
line of the SSH private key.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import quote

import dagster as dg
import pytest
import yaml

from assyncy_dagster.cycle import run_cycle
from assyncy_dagster.facts import SensorCursor
from assyncy_dagster.names import ALERT_JOB, REPATRIATION_JOB
from assyncy_dagster_demo.portal_sim import PortalSimulator
from assyncy_dagster_demo.testing.smtp_sink import SmtpSink
from assyncy_dagster_demo.testing.stack import DEMO_VISITS
from tests.support.faultkit import figure
from tests.support.helpers import alert_on_failed_run, ticker

pytestmark = pytest.mark.slow


def _secret(kind: str) -> str:
    return f"{kind}{secrets.token_hex(12)}"


def test_no_secret_reaches_logs_event_log_metadata_storage_or_mail(stack, monkeypatch):
    portal_passwords = [_secret("PortalPw"), _secret("PortalPw")]
    client_passwords = [_secret("ClientPw"), _secret("ClientPw")]
    smtp_password = _secret("SmtpPw")
    monkeypatch.setenv("ASSYNCY_TEST_SMTP_PASSWORD", smtp_password)  # `${VAR}` in config.yml, as documented
    data = yaml.safe_load(DEMO_VISITS.read_text())
    for i, equipment in enumerate(data["equipment"]):
        equipment["username"] = f"mx{i}@example.edu"
        equipment["password"] = portal_passwords[i]
        equipment["client_name"] = f"mx{i}-client"
        equipment["client_password"] = client_passwords[i]
    config_equipment = [
        {k: e[k] for k in ("id", "username", "password", "client_name", "client_password")} for e in data["equipment"]
    ]
    with PortalSimulator(data) as portal, SmtpSink(auth=("assyncy", smtp_password)) as sink:
        stack.configure(
            **{
                "base-url": portal.url,
                "equipment": config_equipment,
                "log-level": "logging.DEBUG",
                "epnalert-email-smtp": f"127.0.0.1:{sink.port}",
                "smtp-username": "assyncy",
                "smtp-password": "${ASSYNCY_TEST_SMTP_PASSWORD}",
                "smtp-allow-plaintext-login": True,
                "dagster-ui-url": "http://127.0.0.1:3000",
                "portal-retries": 0,
            }
        )
        assert stack.settings().smtp_password == smtp_password
        stack.lay_out("12282a", "14500a", frames=2, size=4096)

        tick, state = ticker(stack)
        first = tick()  # a sensor tick: portal, host listing, plan
        assert isinstance(first, dg.SensorResult)
        report = run_cycle(stack.config_path, stack.instance)  # a repatriation (worker process) and an alert
        assert [r.success for r in report.by_job(REPATRIATION_JOB)] == [True], report.runs
        assert [r.success for r in report.by_job(ALERT_JOB)] == [True], report.runs
        assert sink.wait_for(1) and sink.login_attempts == ["assyncy"]

        failed = stack.materialize("12282b")  # no folder on the host: rsync fails
        assert not failed.success
        alert_on_failed_run(stack.instance, failed.run_id)
        sink.wait_for(2)

        portal.expire_tokens()  # 401 on the cached token: re-authentication
        state["cursor"] = SensorCursor().dumps()
        assert isinstance(tick(), (dg.SensorResult, dg.SkipReason))
        portal.set_faults(fail_next=100, status=500, path="visits")  # a failing portal
        state["cursor"] = SensorCursor().dumps()
        broken = tick()
        assert isinstance(broken, dg.SkipReason) and "500" in broken.skip_message
        # Faults after a token was issued: the failing request's URL carries the access token.
        for fault in (
            {"down": True, "fail_next": 0, "path": "visits"},
            {"down": False, "delay_seconds": 3, "path": "visits"},
        ):
            stack.configure(**{"portal-timeout-seconds": 1})
            portal.set_faults(**fault)
            state["cursor"] = SensorCursor().dumps()
            assert isinstance(tick(), dg.SkipReason)
            lost = stack.materialize("12282b")  # a repatriation that cannot reach the portal either
            assert not lost.success
        portal.set_faults(down=True, delay_seconds=0, path="")
        state["cursor"] = SensorCursor().dumps()
        assert isinstance(tick(), dg.SkipReason)
        tokens = portal.issued_tokens()
        mails = [m.raw for m in sink.received]
    assert len(tokens) >= 3, tokens

    key_lines = [
        line.strip()
        for line in Path(stack.sshd.key_file).read_text().splitlines()
        if line.strip() and not line.startswith("-----")
    ]
    wanted = {
        **{f"portal password {i}": p for i, p in enumerate(portal_passwords)},
        **{f"client password {i}": p for i, p in enumerate(client_passwords)},
        "smtp password": smtp_password,
        **{f"access token {i}": t for i, t in enumerate(tokens)},
        **{f"ssh key line {i}": line for i, line in enumerate(key_lines) if len(line) >= 16},
    }
    needles = {what: {s.encode(), quote(s, safe="").encode()} for what, s in wanted.items()}

    # Everything to scan, as bytes, by where it came from.
    places: dict[str, bytes] = {}
    log_dir = Path(stack.settings().log_files.sync).parent
    for path in sorted(log_dir.rglob("*")):
        if path.is_file():
            places[f"log file {path.name}"] = path.read_bytes()
    assert any(b"DEBUG" in v for k, v in places.items() if k.startswith("log file")), "DEBUG logging was on"
    runs = stack.instance.get_runs()
    for each in runs:
        places[f"run {each.run_id} config+tags"] = (
            dg.serialize_value(each.run_config) + repr(dict(each.tags))
        ).encode()
        entries = stack.instance.all_logs(each.run_id)
        places[f"run {each.run_id} event log"] = "\n".join(dg.serialize_value(e) for e in entries).encode()
    for key in ("epn_data", "portal_visits"):
        records = stack.instance.fetch_materializations(dg.AssetKey(key), limit=1000).records
        places[f"{key} materialisations"] = "\n".join(dg.serialize_value(r) for r in records).encode()
    checks = stack.instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("epn_data"), "matches_source"), limit=1000
    )
    places["matches_source executions"] = "\n".join(
        repr(c) + (dg.serialize_value(c.event) if c.event else "") for c in checks
    ).encode()
    home = Path(stack.instance.root_directory)
    stored = 0
    for path in sorted(home.rglob("*")):
        if path.is_file():
            places[f"DAGSTER_HOME/{path.relative_to(home)}"] = path.read_bytes()
            stored += 1
    assert any(name.endswith(".db") for name in places), "the SQLite files were scanned"
    for i, raw in enumerate(mails):
        places[f"e-mail {i}"] = raw

    # The scan finds what is there: config.yml itself holds the portal passwords.
    assert all(any(f in stack.config_path.read_bytes() for f in needles[f"portal password {i}"]) for i in range(2))
    found = sorted(
        {
            f"{what} in {where}"
            for where, blob in places.items()
            for what, forms in needles.items()
            if any(form in blob for form in forms)
        }
    )
    figure(
        f"secrets scan: {len(wanted)} secrets ({len(portal_passwords) + len(client_passwords)} portal, 1 SMTP, "
        f"{len(tokens)} tokens, {len(wanted) - 5 - len(tokens)} SSH key lines) in {len(places)} places "
        f"({len(runs)} runs, {stored} files under DAGSTER_HOME, {len(mails)} e-mails): {len(found)} found"
    )
    assert found == [], "\n".join(found)
