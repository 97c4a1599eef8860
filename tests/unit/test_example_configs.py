"""The instance and deployment examples under etc/: every file parses, and the settings that must
agree across them do (the rsync pool, the broker, the code location, the volumes)."""

from __future__ import annotations

import pytest
import yaml

from assyncy_dagster_demo.testing.stack import ETC
from tests.support.helpers import SCALE_OUT, load_yaml

YAML_FILES = sorted([*ETC.rglob("*.yml"), *ETC.rglob("*.yaml")])


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ETC)))
def test_every_yaml_file_under_etc_parses(path):
    assert yaml.safe_load(path.read_text()) is not None


def test_examples_are_all_found():
    names = {str(p.relative_to(ETC)) for p in YAML_FILES}
    assert {
        "dagster.yaml",
        "dagster-postgres.yaml",
        "scale-out/dagster.yaml",
        "scale-out/celery.yaml",
        "scale-out/k8s-values.yaml",
    } <= names


def test_postgres_dagster_yaml_keeps_the_single_host_settings():
    postgres, single = load_yaml(ETC / "dagster-postgres.yaml"), load_yaml(ETC / "dagster.yaml")
    assert postgres["concurrency"] == single["concurrency"]
    assert postgres["telemetry"] == single["telemetry"]


def test_scale_out_keeps_the_rsync_pool_at_op_granularity():
    for example in (SCALE_OUT / "dagster.yaml", ETC / "dagster.yaml"):
        config = load_yaml(example)["concurrency"]
        assert (config["pools"]["granularity"], config["pools"]["default_limit"]) == ("op", 1)
        assert config["pools"]["op_granularity_run_buffer"] == 0  # waiting runs wait QUEUED, not STARTED
    k8s = load_yaml(SCALE_OUT / "k8s-values.yaml")["concurrency"]["pools"]
    assert (k8s["granularity"], k8s["defaultLimit"]) == ("op", 1)


def test_celery_workers_and_launcher_use_the_same_broker():
    launcher = load_yaml(SCALE_OUT / "dagster.yaml")["run_launcher"]["config"]
    worker = load_yaml(SCALE_OUT / "celery.yaml")["execution"]["config"]
    assert launcher["broker"] == worker["broker"] == {"env": "ASSYNCY_CELERY_BROKER_URL"}
    assert launcher["backend"] == worker["backend"]


def test_k8s_values_run_each_epn_in_a_job_with_the_code_location():
    values = load_yaml(SCALE_OUT / "k8s-values.yaml")
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "assyncy_dagster.definitions"]
    assert values["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    # Runs need the same config, key and file systems as the code server.
    assert launcher["volumes"] == deployment["volumes"]
    assert launcher["volumeMounts"] == deployment["volumeMounts"]
    assert "ASSYNCY_CONFIG=/opt/assyncy/etc/config.yml" in launcher["envVars"]
