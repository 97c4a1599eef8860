"""Through the real webserver's GraphQL API (what the UI's launchpad sends), nothing
that names a file, a folder, a host or a key can be set at launch time."""

import pytest
import requests

from assyncy_dagster.run_configs import alert_run_config
from assyncy_dagster_demo.testing.stack import far_from_the_digest
from tests.support.helpers import dagster_daemon, wait_for, webserver

pytestmark = pytest.mark.slow


LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on RunConfigValidationInvalid { errors { message } }
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message }
  }
}
"""
LOCATIONS = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"

# Every launch-time override a visitor could try, by resource, with what it would do.
OVERRIDES = {
    "assyncy_config": {"config_path": "/tmp/evil/config.yml"},  # their templates, destination, ignore
    "portal": {"config_path": "/tmp/evil/config.yml"},
    "smtp": {"config_path": "/tmp/evil/config.yml"},
    "sftp": {"host": "evil.example.org", "known_hosts_file": "/dev/null", "source_root": "/etc"},
    "io_manager": {"base_dir": "/etc"},
}


def test_a_launch_that_overrides_a_path_or_host_is_refused(stack, tmp_path):
    with webserver(tmp_path) as url:
        [repo] = requests.post(url, json={"query": LOCATIONS}, timeout=30).json()["data"]["repositoriesOrError"][
            "nodes"
        ]

        def launch(job: str, run_config: dict) -> dict:
            params = {
                "selector": {
                    "repositoryLocationName": repo["location"]["name"],
                    "repositoryName": repo["name"],
                    "jobName": job,
                },
                "runConfigData": run_config,
                "mode": "default",
            }
            body = requests.post(url, json={"query": LAUNCH, "variables": {"params": params}}, timeout=60).json()
            return body["data"]["launchRun"]

        safe = launch("unknown_epn_alert", alert_run_config([]))
        assert safe["__typename"] == "LaunchRunSuccess", safe  # the form is right: safe choices go through
        for resource, fields in OVERRIDES.items():
            for field, value in fields.items():
                for job in ("unknown_epn_alert", "repatriate_epn"):
                    answer = launch(job, {"resources": {resource: {"config": {field: value}}}})
                    assert answer["__typename"] == "RunConfigValidationInvalid", (resource, field, job, answer)
                    assert field in " ".join(e["message"] for e in answer["errors"])


BACKFILL = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""


def test_a_ui_backfill_of_many_epns_runs_them_in_batches_each_recorded(stack, tmp_path):
    """The Materialize dialog's backfill (GraphQL launchPartitionBackfill) gets the batch
    path: one run for the three EPNs, and each EPN its own materialisation and check."""
    import dagster as dg
    import yaml

    epns = ["12282a", "12282b", "13001a"]
    stack.configure(timezone=far_from_the_digest())
    stack.lay_out(*epns)
    stack.instance.add_dynamic_partitions("epn", epns)
    # Already recorded as home, so the sensor leaves them alone: this is a repair from the UI.
    stack.settings().ignore.write_text(yaml.safe_dump({"previouslySynched": epns}))
    with webserver(tmp_path) as url, dagster_daemon(tmp_path) as (daemon, daemon_log):
        params = {"partitionNames": epns, "assetSelection": [{"path": ["epn_data"]}], "fromFailure": False}
        body = requests.post(url, json={"query": BACKFILL, "variables": {"params": params}}, timeout=60).json()
        answer = body["data"]["launchPartitionBackfill"]
        assert answer["__typename"] == "LaunchBackfillSuccess", answer
        backfill = answer["backfillId"]

        def backfill_runs():
            return stack.instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill}))

        wait_for(
            lambda: backfill_runs() and all(r.status == dg.DagsterRunStatus.SUCCESS for r in backfill_runs()),
            150,
            "the backfill's runs to succeed",
            proc=daemon,
            log=daemon_log,
        )
    assert len(backfill_runs()) == 1, "three EPNs, one run"
    for epn in epns:
        records = stack.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("epn_data"), asset_partitions=[epn]), limit=5
        ).records
        assert len(records) == 1 and records[0].asset_materialization.partition == epn
        assert records[0].asset_materialization.metadata["destination"].value.endswith(f"{epn}/data")
    check = dg.AssetCheckKey(dg.AssetKey("epn_data"), "matches_source")
    history = stack.instance.event_log_storage.get_asset_check_execution_history(check, limit=10)
    assert sorted(h.evaluation.partition for h in history if h.evaluation and h.evaluation.passed) == epns
