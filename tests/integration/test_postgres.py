"""etc/dagster-postgres.yaml against a real PostgreSQL: a repatriation's run, materialisation
and check result are stored there, where every host of a scaled-out set-up can see them."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml

from assyncy_dagster.assets.bring_home import CHECK_NAME
from assyncy_dagster.claims import claims
from assyncy_dagster.cycle import run_cycle
from assyncy_dagster.names import REPATRIATION_JOB
from assyncy_dagster_demo.portal_sim import PortalSimulator
from assyncy_dagster_demo.testing.smtp_sink import SmtpSink
from assyncy_dagster_demo.testing.stack import (
    DEMO_VISITS,
    ETC,
    lay_out_epns,
    mx_frames,
    write_config,
)

pytest.importorskip("dagster_postgres", reason="needs the postgres extra: pip install -e '.[postgres]'")
psycopg2 = pytest.importorskip("psycopg2", reason="needs the postgres extra: pip install -e '.[postgres]'")

pytestmark = pytest.mark.slow

_databases = itertools.count(1)


@pytest.fixture
def pg_database(postgres_server):
    """An empty database of its own on the session's server."""
    return postgres_server.create_database(f"dagster_test_{next(_databases)}")


@pytest.fixture
def postgres_home(pg_database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """DAGSTER_HOME whose dagster.yaml is etc/dagster-postgres.yaml with only the server's
    address changed; the password comes from DAGSTER_PG_PASSWORD, as in production."""
    config = yaml.safe_load((ETC / "dagster-postgres.yaml").read_text())
    database = config["storage"]["postgres"]["postgres_db"]
    assert database["password"] == {"env": "DAGSTER_PG_PASSWORD"}
    database.update(
        hostname=pg_database.host,
        port=pg_database.port,
        db_name=pg_database.database,
        username=pg_database.username,
    )
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", pg_database.password)
    # run_cycle's transfer workers open the instance from DAGSTER_HOME in their own processes.
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture
def epn_on_sftp(sshd) -> Iterator[tuple[str, str]]:
    """12282a (mapped to ny79, visit ended in the demo portal data) on a beamline of its own."""
    beamline = f"pg{next(_databases)}"
    lay_out_epns(sshd, {"12282a": mx_frames(3, 16 * 1024)}, beamline=beamline)
    try:
        yield beamline, "12282a"
    finally:
        shutil.rmtree(sshd.beamline_dir(beamline), ignore_errors=True)


def count(database, sql: str, *args: object) -> int:
    with (
        psycopg2.connect(
            host=database.host,
            port=database.port,
            dbname=database.database,
            user=database.username,
            password=database.password,
        ) as connection,
        connection.cursor() as cursor,
    ):
        cursor.execute(sql, args)
        return cursor.fetchone()[0]


def test_instance_from_the_example_config_stores_everything_in_postgresql(postgres_home):
    from dagster_postgres import (
        PostgresEventLogStorage,
        PostgresRunStorage,
        PostgresScheduleStorage,
    )

    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert instance.get_concurrency_config().pool_config.pool_granularity.value == "op"


def test_repatriation_run_materialisation_and_check_are_stored_in_postgresql(
    postgres_home, pg_database, epn_on_sftp, sshd, tmp_path, monkeypatch
):
    beamline, epn = epn_on_sftp
    scratch = tmp_path / "scratch"
    with PortalSimulator(DEMO_VISITS) as portal, SmtpSink() as smtp:
        config = write_config(
            tmp_path / "etc" / "config.yml",
            portal_url=portal.url,
            sshd=sshd,
            smtp_port=smtp.port,
            destination_root=scratch,
            epn_cap_map={"12282": "ny79"},
            extra={"beamline": beamline},
        )
        monkeypatch.setenv("ASSYNCY_CONFIG", str(config))
        with dg.DagsterInstance.get() as instance:
            report = run_cycle(config, instance)

            outcomes = report.by_job(REPATRIATION_JOB)
            assert [(o.partition, o.success, o.error) for o in outcomes] == [(epn, True, "")]
            run_id = outcomes[0].run_id
            assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS

            materialization = instance.get_latest_materialization_event(dg.AssetKey("epn_data"))
            assert materialization is not None and materialization.run_id == run_id
            assert materialization.asset_materialization.partition == epn

            check_key = dg.AssetCheckKey(dg.AssetKey("epn_data"), CHECK_NAME)
            [check] = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=5)
            assert check.run_id == run_id
            assert check.event.asset_check_evaluation.passed

    assert (scratch / "ny79" / epn / "data" / "frames" / "img_0001.cbf").is_file()
    # Proof from PostgreSQL itself, not through Dagster's storage classes.
    assert count(pg_database, "SELECT count(*) FROM runs WHERE run_id = %s AND status = 'SUCCESS'", run_id) == 1
    assert (
        count(
            pg_database,
            "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION' "
            "AND asset_key = %s AND partition = %s",
            run_id,
            dg.AssetKey("epn_data").to_string(),
            epn,
        )
        == 1
    )
    assert (
        count(
            pg_database,
            "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_CHECK_EVALUATION'",
            run_id,
        )
        == 1
    )


CLAIMER = """
import sys, time
import dagster as dg
from assyncy_dagster.claims import claim_epn
run_id, start, epns = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
with dg.DagsterInstance.get() as instance:
    while time.time() < start:
        time.sleep(0.001)
    print(" ".join(epn for epn in epns if claim_epn(instance, epn, run_id) is None), flush=True)
"""


def test_processes_racing_for_epn_claims_in_postgresql_get_one_each(postgres_home):
    """claims.py's one-statement claim on PostgreSQL (autocommit, several connections): six
    processes reach for the same 30 EPNs at the same instant; each EPN has one holder."""
    epns = [f"12282{chr(ord('a') + i)}" for i in range(26)] + ["13001a", "13001b", "13001c", "13001d"]
    with dg.DagsterInstance.get() as instance:
        runs = []
        for _ in range(6):
            run_id = str(uuid.uuid4())
            instance.add_run(
                dg.DagsterRun(job_name=REPATRIATION_JOB, run_id=run_id, status=dg.DagsterRunStatus.STARTED)
            )
            runs.append(run_id)
        start = time.time() + 8  # after every process has started and opened the instance
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CLAIMER, run_id, str(start), *epns], stdout=subprocess.PIPE, text=True
            )
            for run_id in runs
        ]
        got = {run_id: proc.communicate(timeout=120)[0].split() for run_id, proc in zip(runs, procs, strict=True)}
        held = claims(instance, epns)
    winners = [epn for taken in got.values() for epn in taken]
    assert sorted(winners) == sorted(epns), json.dumps(got)
    assert held == {epn: run_id for run_id, taken in got.items() for epn in taken}
