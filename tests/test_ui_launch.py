"""Through the real webserver's GraphQL API (what the UI's launchpad sends), nothing
that names a file, a folder, a host or a key can be set at launch time."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from helpers import running, wait_for

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_launch_that_overrides_a_path_or_host_is_refused(stack, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/graphql"
    log = tmp_path / "webserver.log"
    argv = [str(BIN / "dagster-webserver"), "-m", "assyncy_dagster.definitions", "-h", "127.0.0.1", "-p", str(port)]
    with open(log, "w") as out, running(argv, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ)) as web:

        def answers() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/server_info", timeout=2).ok
            except requests.RequestException:
                return False

        wait_for(answers, 90, "the webserver", proc=web, log=log)
        [repo] = requests.post(url, json={"query": LOCATIONS}, timeout=30).json()["data"]["repositoriesOrError"]["nodes"]

        def launch(job: str, run_config: dict) -> dict:
            params = {
                "selector": {"repositoryLocationName": repo["location"]["name"], "repositoryName": repo["name"],
                             "jobName": job},
                "runConfigData": run_config,
                "mode": "default",
            }
            body = requests.post(url, json={"query": LAUNCH, "variables": {"params": params}}, timeout=60).json()
            return body["data"]["launchRun"]

        safe = launch("unknown_epn_alert", {"ops": {"send_unknown_epn_alert_op": {"config": {"epns": []}}}})
        assert safe["__typename"] == "LaunchRunSuccess", safe  # the form is right: safe choices go through
        for resource, fields in OVERRIDES.items():
            for field, value in fields.items():
                for job in ("unknown_epn_alert", "repatriate_epn"):
                    answer = launch(job, {"resources": {resource: {"config": {field: value}}}})
                    assert answer["__typename"] == "RunConfigValidationInvalid", (resource, field, job, answer)
                    assert field in " ".join(e["message"] for e in answer["errors"])
