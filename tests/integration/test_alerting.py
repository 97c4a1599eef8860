"""Unknown-EPN alerts, the daily digest and failure alerts, received by a real SMTP server."""

import dagster as dg

from assyncy_dagster.alerts.unknown_epn import SUBJECT
from assyncy_dagster.cycle import run_cycle
from assyncy_dagster.definitions import build_definitions
from assyncy_dagster.names import ALERT_JOB
from assyncy_dagster.state import ALERTED_KEY, read_epns
from tests.support.helpers import alert_on_failed_run, text_and_html


def test_one_alert_covers_every_new_unmapped_epn_in_both_parts(stack):
    stack.lay_out("14500a", "14777a")
    report = run_cycle(stack.config_path, stack.instance)
    assert [r.success for r in report.by_job(ALERT_JOB)] == [True]
    [message] = stack.smtp.wait_for(1)
    assert message["Subject"] == SUBJECT
    assert message["To"] == "helpdesk@example.edu"
    text, html = text_and_html(message)
    for body in (text, html):
        assert "14500a" in body and "14777a" in body
    assert "Siobh" in text  # 14500a's principal scientist, from the portal
    assert "Ana &amp; Luis" in html and "Ana & Luis" not in html  # autoescaped
    assert read_epns(stack.settings().alerted_path, ALERTED_KEY) == {"14500a", "14777a"}


def test_each_epn_is_alerted_once(stack):
    stack.lay_out("14500a")
    run_cycle(stack.config_path, stack.instance)
    stack.smtp.wait_for(1)
    stack.lay_out("14777a")
    run_cycle(stack.config_path, stack.instance)
    messages = stack.smtp.wait_for(2)
    assert "14500a" not in text_and_html(messages[1])[0] and "14777a" in text_and_html(messages[1])[0]
    run_cycle(stack.config_path, stack.instance)
    assert len(stack.smtp.messages) == 2


def test_smtp_failure_leaves_epns_unalerted_and_the_next_tick_retries(stack):
    stack.lay_out("14500a")
    stack.smtp.refuse_next(1)
    failed = run_cycle(stack.config_path, stack.instance)
    [outcome] = failed.by_job(ALERT_JOB)
    assert not outcome.success and "refused" in outcome.error
    assert read_epns(stack.settings().alerted_path, ALERTED_KEY) == set()
    retried = run_cycle(stack.config_path, stack.instance)
    assert [r.success for r in retried.by_job(ALERT_JOB)] == [True]
    assert len(stack.smtp.messages) == 1, "exactly one e-mail after the retry"


def test_daily_digest_lists_every_still_unmapped_epn(stack):
    stack.lay_out("14500a", "14777a", "12282a")
    run_cycle(stack.config_path, stack.instance)  # alerts both once
    stack.smtp.wait_for(1)
    defs = build_definitions(str(stack.config_path))
    schedule = defs.get_schedule_def("unknown_epn_digest")
    assert schedule.cron_schedule == "0 1 * * *"
    with dg.build_schedule_context(instance=stack.instance) as context:
        [request] = schedule.evaluate_tick(context).run_requests
    result = defs.resolve_job_def(ALERT_JOB).execute_in_process(run_config=request.run_config, instance=stack.instance)
    assert result.success
    digest = stack.smtp.wait_for(2)[1]
    text, _ = text_and_html(digest)
    assert "14500a" in text and "14777a" in text and "12282a" not in text


def test_failed_repatriation_emails_the_helpdesk_with_a_link(stack):
    stack.configure(**{"dagster-ui-url": "http://127.0.0.1:3000"})
    # 12282a is mapped and ended, but its folder is missing on the host: rsync fails.
    result = stack.materialize("12282a")
    assert not result.success
    alert_on_failed_run(stack.instance, result.run_id)
    [message] = stack.smtp.wait_for(1)
    assert "12282a" in message["Subject"]
    text, _ = text_and_html(message)
    assert "12282a" in text and "rsync" in text.lower()
    assert f"http://127.0.0.1:3000/runs/{result.run_id}" in text
