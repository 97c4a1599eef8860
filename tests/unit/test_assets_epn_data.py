"""The epn_data asset's branches, run in this process with the SFTP host and the portal as
canned answers (tests/support/fakes.py): what a user sees of a dry-run, of a visit still
running, and of a real transfer. config.yml is read as in production; nothing is started."""

from __future__ import annotations

import gc
import time
from pathlib import Path

import dagster as dg
import pytest

from assyncy_dagster.assets.bring_home import DRY_RUN_MODE
from assyncy_dagster.assets.epn_data import epn_data, epn_data_matches_source
from assyncy_dagster.partitions import EPN_PARTITIONS_NAME
from assyncy_dagster.resources.settings import AssyncyConfigResource, NoStorageIOManager
from assyncy_dagster.transfer.bag import read_manifest
from assyncy_dagster_demo.testing.stack import DEMO_CAP_MAP
from tests.support.fakes import CannedPortal, CannedRsyncClient, CannedSource
from tests.support.helpers import EPN_DATA, LocalSite, check_results, epn_data_metadata, failure_text, sample_config

FILES = {"frames/img_0001.cbf": 4096, "frames/img_0002.cbf": 4096, "processing/xds.log": 17, ".info": 14}
SIZE = sum(FILES.values())


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalSite:
    """config.yml (the shipped sample, with a destination under tmp_path holding the projects'
    folders) named by ASSYNCY_CONFIG, as the service's environment names it."""
    root = tmp_path / "scratch"
    for project in DEMO_CAP_MAP.values():
        (root / project).mkdir(parents=True)
    config = sample_config(
        tmp_path,
        **{
            "epn_cap_map": DEMO_CAP_MAP,
            "destination-root-path": str(root),
            "ignore": str(tmp_path / "ignore.yml"),
            "execute": True,
        },
    )
    monkeypatch.setenv("ASSYNCY_CONFIG", str(config))
    return LocalSite(config_path=config, destination_root=root)


def materialize_epn_data(epn: str, portal: CannedPortal, run_config: dict | None = None) -> dg.ExecuteInProcessResult:
    """epn_data (and its check) for one partition, as the UI launches it, on an in-memory instance."""
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(EPN_PARTITIONS_NAME, [epn])
    resources = {
        "portal": portal,
        "sftp": CannedSource(files={epn: FILES}),
        "assyncy_config": AssyncyConfigResource(),
        "io_manager": NoStorageIOManager(),
    }
    return dg.materialize(
        [epn_data, epn_data_matches_source],
        partition_key=epn,
        instance=instance,
        resources=resources,
        run_config=run_config,
        raise_on_error=False,
    )


def files_at(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def test_a_dry_run_is_an_observation_of_what_would_be_copied_and_copies_nothing(site):
    result = materialize_epn_data(
        "12282a", CannedPortal(ended=["12282a"]), run_config={"ops": {"epn_data": {"config": {"execute": False}}}}
    )

    assert result.success
    assert not result.get_asset_materialization_events(), "a dry-run must never show the EPN as home"
    [observation] = [
        e.event_specific_data.asset_observation for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"
    ]
    assert (observation.asset_key, observation.partition) == (EPN_DATA, "12282a")
    metadata = {k: v.value for k, v in observation.metadata.items()}
    assert metadata["mode"] == DRY_RUN_MODE == "DRY-RUN: nothing copied"
    assert metadata["dry_run"] is True
    assert (metadata["source_files"], metadata["source_bytes"]) == (len(FILES), SIZE)
    assert metadata["destination"] == str(site.destination("ny79", "12282a"))
    assert files_at(site.destination_root) == [] and site.ignored() == []
    assert check_results(result) == [], "nothing was copied, so nothing is checked"


def test_a_visit_still_running_is_refused_naming_the_epn_and_copies_nothing(site):
    result = materialize_epn_data("13001b", CannedPortal(running=["13001b"]))

    assert not result.success
    message = failure_text(result)
    assert message.startswith("EPN 13001b: visit still running (ends ")
    assert "its data may still grow" in message
    assert "Set allow_running_visit: true in the run config to sync it anyway." in message
    assert files_at(site.destination_root) == [] and site.ignored() == []


def test_a_real_transfer_is_materialised_with_what_was_copied_verified_and_recorded(site):
    result = materialize_epn_data("12282a", CannedPortal(ended=["12282a"]))

    assert result.success, failure_text(result)
    destination = site.destination("ny79", "12282a")
    metadata = epn_data_metadata(result)
    assert metadata["mode"] == "real transfer" and metadata["dry_run"] is False
    assert metadata["destination"] == str(destination)
    assert (metadata["files_transferred"], metadata["bytes_transferred"]) == (len(FILES), SIZE)
    assert (metadata["source_files"], metadata["source_bytes"], metadata["source_symlinks"]) == (len(FILES), SIZE, 0)
    assert (metadata["files_at_destination"], metadata["bytes_at_destination"]) == (len(FILES), SIZE)
    assert metadata["verified"] is True
    assert metadata["change"] == "first verified sync"
    assert (metadata["rsync_exit_code"], metadata["streams"]) == (0, 1)
    assert len(metadata["source_digest"]) > 0
    # Every file came with the sender's checksum: the manifest beside data/ lists each one,
    # and its digest is the materialisation's data version.
    assert (metadata["files_verified_by_content"], metadata["files_verified_by_size_only"]) == (len(FILES), 0)
    recorded = read_manifest(destination.parent)
    assert recorded is not None and sorted(recorded.tree) == sorted(FILES)
    assert metadata["manifest_digest"] == recorded.digest
    [materialization] = [e.event_specific_data.materialization for e in result.all_events if e.is_step_materialization]
    assert materialization.tags["dagster/data_version"] == recorded.digest
    [check] = check_results(result)
    assert (check.check_name, check.partition, check.passed) == ("matches_source", "12282a", True)
    assert sorted(str(p.relative_to(destination)) for p in files_at(destination)) == sorted(FILES)
    assert site.ignored() == ["12282a"]


def test_a_malformed_visit_of_an_ended_epn_is_refused_naming_it_and_copies_nothing(site):
    why = "equipment 24: visit #2 (id 50199, EPN 12282a): end_time '2026-12-07T09:00:00' is not ... UTC offset"
    result = materialize_epn_data("12282a", CannedPortal(ended=["12282a"], malformed={"12282a": why}))

    assert not result.success
    message = failure_text(result)
    assert message.startswith("EPN 12282a: the portal sent a malformed visit of it"), message
    assert why in message and "Set allow_running_visit: true" in message
    assert files_at(site.destination_root) == [] and site.ignored() == []


def test_the_data_is_flushed_to_disk_before_its_manifest_and_ignore_yml_are_written(site, monkeypatch):
    # A power cut cannot be produced here: the flush itself is observed (the real one runs in
    # the integration tier). It runs beside the verification, so what matters is what had
    # been written when it *ended*: neither the manifest nor ignore.yml.
    import assyncy_dagster.transfer.bag as bag_module

    flush_to_disk = bag_module.flush_to_disk
    seen: list[tuple[bool, list[str]]] = []

    def observed_flush(folder: Path) -> None:
        flush_to_disk(folder)
        time.sleep(0.5)  # a slow disk: the step must wait for it, not write past it
        seen.append(((folder.parent / "assyncy-manifest.tsv").exists(), site.ignored()))

    monkeypatch.setattr(bag_module, "flush_to_disk", observed_flush)
    result = materialize_epn_data("12282a", CannedPortal(ended=["12282a"]))
    assert result.success, failure_text(result)
    assert seen == [(False, [])]  # flushed once, done before the manifest and before ignore.yml
    assert site.ignored() == ["12282a"]


def test_the_step_sets_its_start_up_objects_aside_from_the_cycle_collector_and_gives_them_back(site, monkeypatch):
    """A full collection in the step would rescan every object made before it (Dagster's, the code
    location's): 0.1 s each, and one fell inside most no-op re-syncs of 10,000 files. They are set
    aside (gc.freeze) while the step runs, and given back when it ends: a Celery worker runs many."""
    frozen_during_transfer = []
    transfer = CannedRsyncClient.transfer

    def transfer_seeing_the_collector(self, *args, **kwargs):
        frozen_during_transfer.append(gc.get_freeze_count())
        return transfer(self, *args, **kwargs)

    monkeypatch.setattr(CannedRsyncClient, "transfer", transfer_seeing_the_collector)
    assert gc.get_freeze_count() == 0

    result = materialize_epn_data("12282a", CannedPortal(ended=["12282a"]))

    assert result.success, failure_text(result)
    assert frozen_during_transfer and frozen_during_transfer[0] > 10_000
    assert gc.get_freeze_count() == 0
    assert site.ignored() == ["12282a"]
