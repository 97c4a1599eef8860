"""The stuck-EPN canary's rules that read a Dagster instance (on disk, in a temporary folder): which
EPNs are stuck longer than stuck-after-hours, one in a running run, a refresh that keeps failing."""

import json
from datetime import timedelta

import dagster as dg

from assyncy_dagster.canary import (
    NOT_ON_HOST,
    REQUESTED,
    record_due,
    stuck_report,
)
from assyncy_dagster.config import Settings
from assyncy_dagster.outcomes import Outcome
from assyncy_dagster.portal.errors import PortalAuthError
from assyncy_dagster.refresh_failures import (
    MAX_ERROR_CHARS,
    clear_refresh_failure,
    record_refresh_failure,
    refresh_failure_file,
)
from assyncy_dagster.run_records import outcome_tags
from tests.support.helpers import NOW


def canary_settings(**overrides: object) -> Settings:
    """Just the settings the stuck-EPN canary reads (built, not loaded from a file)."""
    values = {"equipment": [], "smtp_password": "s3cret-smtp", "stuck_after_hours": 24, "timezone": "UTC"}
    return Settings.model_construct(**{**values, **overrides})


def test_stuck_report_lists_only_epns_due_longer_than_stuck_after_hours_oldest_first():
    with dg.instance_for_test() as instance:
        record_due(instance, {"12282a": NOT_ON_HOST}, NOW - timedelta(hours=30))
        record_due(instance, {"12282a": NOT_ON_HOST, "13001a": "its folder held no files"}, NOW - timedelta(hours=25))
        record_due(
            instance,
            {"12282a": NOT_ON_HOST, "13001a": "its folder held no files", "12282b": REQUESTED},
            NOW - timedelta(hours=2),
        )

        entries = stuck_report(instance, canary_settings(), NOW)

    assert [(e.name, e.since, e.reason) for e in entries] == [
        ("12282a", NOW - timedelta(hours=30), NOT_ON_HOST),
        ("13001a", NOW - timedelta(hours=25), "held back: its folder held no files"),
    ]


def test_a_stuck_epn_in_a_running_run_is_waiting_on_that_run():
    @dg.op
    def noop():
        pass

    @dg.job(name="repatriate_epn")
    def job():
        noop()

    with dg.instance_for_test() as instance:
        run = instance.create_run_for_job(
            job_def=job, tags=outcome_tags(["12282a"], Outcome.RUNNING), status=dg.DagsterRunStatus.STARTED
        )
        record_due(instance, {"12282a": REQUESTED}, NOW - timedelta(hours=30))

        [entry] = stuck_report(instance, canary_settings(), NOW)

    assert entry.reason == f"waiting on a run: run {run.run_id} is running"


def test_a_refresh_failure_keeps_its_first_time_masks_secrets_and_is_reported_after_stuck_after_hours():
    first = NOW - timedelta(hours=30)
    again = PortalAuthError("SMTP said s3cret-smtp " + "x" * 1000)
    with dg.instance_for_test() as instance:
        path = refresh_failure_file(instance)
        assert (
            record_refresh_failure(path, "portal", PortalAuthError("refused"), first, canary_settings())
            == first.timestamp()
        )
        assert (
            record_refresh_failure(path, "portal", again, NOW - timedelta(hours=1), canary_settings())
            == first.timestamp()
        )
        saved = json.loads(path.read_text())
        [entry] = stuck_report(instance, canary_settings(), NOW)
        assert stuck_report(instance, canary_settings(stuck_after_hours=48), NOW) == []
        clear_refresh_failure(path)
        assert stuck_report(instance, canary_settings(), NOW) == []

    assert "s3cret-smtp" not in saved["error"] and len(saved["error"]) <= MAX_ERROR_CHARS
    assert (entry.name, entry.since) == ("portal", first)
    assert entry.reason.startswith("portal authentication failing at every refresh (last tried ")
