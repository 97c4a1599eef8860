"""The fixity_audit job's reporting, run in this process on a local instance: what each kind of
recorded EPN gets (intact, its folder gone, no manifest, unmapped), with config.yml read as in
production and manifests written by the transfer's own writer. Nothing is started."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest
import xxhash

from assyncy_dagster.definitions import build_resources
from assyncy_dagster.fixity import findings_path, read_findings
from assyncy_dagster.jobs import fixity_audit_job
from assyncy_dagster.partitions import EPN_PARTITIONS_NAME
from assyncy_dagster.state import add_epns
from assyncy_dagster.transfer.manifests import Entry, Kind
from assyncy_dagster_demo.testing.stack import DEMO_CAP_MAP
from tests.support.helpers import check_results, failure_text, sample_config, write_manifest

MTIME = 1_700_000_000


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """config.yml (the shipped sample, destination and ignore.yml under tmp_path) in ASSYNCY_CONFIG."""
    scratch = tmp_path / "scratch"
    config = sample_config(
        tmp_path,
        **{"epn_cap_map": DEMO_CAP_MAP, "destination-root-path": str(scratch), "ignore": str(tmp_path / "ignore.yml")},
    )
    monkeypatch.setenv("ASSYNCY_CONFIG", str(config))
    return scratch


def bring_home(root: Path, epn: str, project: str, *, manifest: bool = True) -> Path:
    """An EPN folder as a transfer leaves it (two frames, their manifest), recorded in ignore.yml."""
    epn_folder = root / project / epn
    tree = {}
    for name in ("img_0001.cbf", "img_0002.cbf"):
        data = os.urandom(64 * 1024)
        path = epn_folder / "data" / "frames" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (MTIME, MTIME))
        tree[f"frames/{name}"] = Entry(Kind.FILE, len(data), MTIME, checksum=xxhash.xxh3_128(data).hexdigest())
    if manifest:
        write_manifest(epn_folder, tree, algorithm="xxh128", info={"External-Identifier": epn})
    add_epns(root.parent / "ignore.yml", [epn])
    return epn_folder


def local_instance(folder: Path) -> dg.DagsterInstance:
    """An in-memory instance whose storage folder (the findings file's) is under `folder`."""
    folder.mkdir()
    return dg.DagsterInstance.ephemeral(tempdir=str(folder))


def audit(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return fixity_audit_job.execute_in_process(instance=instance, resources=build_resources(), raise_on_error=False)


def test_each_recorded_epn_gets_its_own_result_and_a_damaged_one_fails_the_run(root, tmp_path):
    bring_home(root, "12282a", "ny79")  # intact, and no partition yet: recorded by another instance
    bring_home(root, "13001a", "ab12")
    (root / "ab12" / "13001a" / "data" / "frames" / "img_0002.cbf").unlink()
    gone = bring_home(root, "12282b", "ny79")
    for path in sorted(gone.rglob("*"), reverse=True):  # recorded, and its whole folder is gone since
        path.unlink() if not path.is_dir() else path.rmdir()
    bring_home(root, "14500a", "xx99")  # recorded, but its base number is no longer mapped
    with local_instance(tmp_path / "home") as instance:
        instance.add_dynamic_partitions(EPN_PARTITIONS_NAME, ["13001a", "12282b"])
        result = audit(instance)
        assert not result.success
        assert "12282b" in failure_text(result) and "13001a" in failure_text(result)
        assert "12282a" not in failure_text(result)
        checks = {c.partition: c for c in check_results(result)}
        assert {epn: c.passed for epn, c in checks.items()} == {"12282a": True, "12282b": False, "13001a": False}
        assert "folder" in checks["12282b"].description and "missing at home" in checks["12282b"].description
        assert "missing: frames/img_0002.cbf" in checks["13001a"].description
        assert "12282a" in instance.get_dynamic_partitions(EPN_PARTITIONS_NAME)  # the repair needs a partition
        findings = read_findings(findings_path(instance.storage_directory()))
        assert set(findings) == {"13001a"} and findings["13001a"].missing == ("frames/img_0002.cbf",)
        messages = [e.user_message for e in instance.all_logs(result.run_id)]
        assert any("EPN 14500a: not audited" in m and "not mapped" in m for m in messages), messages


def test_an_epn_without_a_manifest_is_a_warning_on_its_partition_or_a_log_line(root, tmp_path):
    bring_home(root, "12282a", "ny79", manifest=False)
    bring_home(root, "13001a", "ab12", manifest=False)
    with local_instance(tmp_path / "home") as instance:
        instance.add_dynamic_partitions(EPN_PARTITIONS_NAME, ["12282a"])
        result = audit(instance)
        assert result.success  # nothing is found damaged, and nothing could be read
        [check] = check_results(result)
        assert check.partition == "12282a" and check.severity == dg.AssetCheckSeverity.WARN and not check.passed
        assert "no manifest: verified by size only" in check.description
        assert "13001a" not in instance.get_dynamic_partitions(EPN_PARTITIONS_NAME)  # the old tool's: left alone
        messages = [e.user_message for e in instance.all_logs(result.run_id)]
        assert any("EPN 13001a: no manifest: verified by size only" in m for m in messages)
