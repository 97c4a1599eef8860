"""The deployment examples under etc/ as the real Dagster plug-ins read them: dagster.yaml validated
by Dagster (with dagster-postgres and dagster-celery loaded), working instances on disk, and the
Celery worker and Kubernetes launcher settings against dagster-celery's and dagster-k8s's schemas."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config

from assyncy_dagster_demo.testing.stack import ETC
from tests.support.helpers import BROKER, SCALE_OUT, load_yaml

pytestmark = pytest.mark.usefixtures("examples_environment")


def validated(tmp_path: Path, config: dict) -> dict:
    """Dagster's own check of a dagster.yaml, as the daemon does at start."""
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    value, _ = dagster_instance_config(str(tmp_path))
    return value


def test_single_host_dagster_yaml_makes_a_working_instance(tmp_path):
    (tmp_path / "dagster.yaml").write_text((ETC / "dagster.yaml").read_text())
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        pools = instance.get_concurrency_config().pool_config
        assert (pools.pool_granularity.value, pools.default_pool_limit) == ("op", 1)
        assert not instance.telemetry_enabled


def test_scale_out_instance_starts_with_the_celery_run_launcher(tmp_path):
    pytest.importorskip("dagster_celery", reason="validates for real only with dagster-celery==0.29.27 installed")
    config = load_yaml(SCALE_OUT / "dagster.yaml")
    # Everything but the database as in the example: the launcher, run monitoring, shared storage.
    config["storage"] = {"sqlite": {"base_dir": str(tmp_path / "db")}}
    config["local_artifact_storage"]["config"]["base_dir"] = str(tmp_path / "shared")
    config["compute_logs"]["config"]["base_dir"] = str(tmp_path / "shared" / "logs")
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance.run_launcher).__name__ == "CeleryRunLauncher"
        assert (instance.run_launcher.broker, instance.run_launcher.default_queue) == (BROKER, "dagster")
        assert instance.run_monitoring_enabled


def test_postgres_dagster_yaml_is_valid_and_reads_the_password_from_the_environment(tmp_path):
    config = load_yaml(ETC / "dagster-postgres.yaml")
    database = validated(tmp_path, config)["storage"]["postgres"]["postgres_db"]
    assert database["password"] == {"env": "DAGSTER_PG_PASSWORD"}
    assert database["scheme"] == "postgresql+psycopg2"  # SQLAlchemy 2.1 needs the driver named


def test_scale_out_dagster_yaml_is_valid(tmp_path):
    value = validated(tmp_path, load_yaml(SCALE_OUT / "dagster.yaml"))
    assert value["run_launcher"]["class"] == "CeleryRunLauncher"
    assert "postgres" in value["storage"]


def test_celery_worker_config_is_valid_for_dagster_celery():
    cli = pytest.importorskip("dagster_celery.cli", reason="validates for real only with dagster-celery installed")
    config = cli.get_validated_config(str(SCALE_OUT / "celery.yaml"))
    assert config["broker"] == BROKER
    assert config["backend"] == BROKER
    # A busy worker never holds a run another host could start (see celery.yaml).
    assert config["config_source"]["worker_prefetch_multiplier"] == 1
    assert config["config_source"]["task_acks_late"] is True


def test_k8s_run_launcher_settings_are_valid_for_dagster_k8s():
    k8s = pytest.importorskip("dagster_k8s", reason="validates for real only with dagster-k8s==0.29.27 installed")
    launcher = load_yaml(SCALE_OUT / "k8s-values.yaml")["runLauncher"]["config"]["k8sRunLauncher"]
    # What the chart renders into dagster.yaml from these values (plus its own fixed keys).
    config = {
        "instance_config_map": "assyncy-dagster-instance",
        "dagster_home": "/opt/dagster/dagster_home",
        "postgres_password_secret": "dagster-postgresql-secret",
        "load_incluster_config": True,
        "env_secrets": [secret["name"] for secret in launcher["envSecrets"]],
        "env_vars": launcher["envVars"],
        "volumes": launcher["volumes"],
        "volume_mounts": launcher["volumeMounts"],
        "run_k8s_config": {"pod_spec_config": launcher["runK8sConfig"]["podSpecConfig"]},
    }
    result = validate_config(k8s.K8sRunLauncher.config_type(), config)
    assert result.success, [error.message for error in result.errors]
