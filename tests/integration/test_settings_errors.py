"""Every error lands somewhere: a settings error or an unwritable destination fails the EPNs
it concerns with a message naming its cause, the sensor's tick skips with the reason, and no
run ends with an EPN still tagged queued or running."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from assyncy_dagster.definitions import build_definitions
from assyncy_dagster.domain import Visit
from assyncy_dagster.facts import Facts, look_for_new_data
from assyncy_dagster.names import REPATRIATION_JOB
from assyncy_dagster.outcomes import Outcome
from assyncy_dagster.partitions import EPN_PARTITIONS_NAME
from assyncy_dagster.resources.ssh_source import SshSourceResource
from assyncy_dagster.run_configs import batch_run_config
from assyncy_dagster.run_records import tagged_epns
from tests.support.helpers import failure_text, ticker

EPNS = ["12282a", "13001a"]  # mapped (ny79, ab12) and ended in the demo portal data


def _batch(stack, epns: list[str]) -> dg.ExecuteInProcessResult:
    """A repatriate_epn batch run, as epn_sensor and mxsync launch it."""
    job = build_definitions(str(stack.config_path)).resolve_job_def(REPATRIATION_JOB)
    return job.execute_in_process(
        run_config=batch_run_config(epns, execute=True),
        instance=stack.instance,
        tags={f"assyncy/epn/{e}": Outcome.QUEUED.value for e in epns},
        raise_on_error=False,
    )


def _outcomes(stack, result: dg.ExecuteInProcessResult) -> dict[str, str]:
    run = stack.instance.get_run_by_id(result.run_id)
    assert run is not None
    return tagged_epns(run.tags)


def _nothing_in_flight(stack) -> None:
    """No ended run keeps an EPN queued or running."""
    for run in stack.instance.get_runs():
        if run.is_finished:
            left = {e: o for e, o in tagged_epns(run.tags).items() if o in ("queued", "running")}
            assert left == {}, f"run {run.run_id} ({run.status.value}) left {left}"


@contextlib.contextmanager
def immutable(folder: Path) -> Iterator[None]:
    """A folder nobody, root included, can write into (ext4's immutable attribute): what a
    destination the service account may not write looks like to a test that runs as root."""
    subprocess.run(["chattr", "+i", str(folder)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.mark.parametrize(
    "setting, config_key",
    [("key-file", "key-file"), ("known-hosts-file", "known-hosts-file")],
)
def test_a_missing_ssh_file_fails_every_epn_of_the_batch_naming_the_setting(stack, tmp_path, setting, config_key):
    stack.lay_out(*EPNS)
    stack.instance.add_dynamic_partitions(EPN_PARTITIONS_NAME, EPNS)
    stack.configure(**{config_key: str(tmp_path / "deleted" / setting)})
    result = _batch(stack, EPNS)
    assert not result.success
    assert setting in failure_text(result) and "does not exist" in failure_text(result)
    assert _outcomes(stack, result) == dict.fromkeys(EPNS, "failed")
    _nothing_in_flight(stack)


def test_a_deleted_known_hosts_file_fails_the_epns_naming_it(stack, tmp_path):
    stack.lay_out(*EPNS)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_bytes(Path(stack.settings().known_hosts_file).read_bytes())
    stack.configure(**{"known-hosts-file": str(known_hosts)})
    assert _batch(stack, ["12282a"]).success
    known_hosts.unlink()  # an admin's clean-up, between two runs
    result = _batch(stack, ["13001a"])
    assert "known-hosts-file" in failure_text(result) and str(known_hosts) in failure_text(result)
    assert _outcomes(stack, result) == {"13001a": "failed"}
    _nothing_in_flight(stack)


def test_an_unwritable_destination_fails_its_epn_naming_the_folder_and_the_others_come_home(stack):
    stack.lay_out(*EPNS)
    project = stack.destination_root / "ny79"
    with immutable(project):
        result = _batch(stack, EPNS)
    assert not result.success
    text = failure_text(result)
    assert "12282a" in text and str(project) in text and "destination-root-path" in text, text
    assert _outcomes(stack, result) == {"12282a": "failed", "13001a": "home"}
    assert stack.ignored() == ["13001a"]
    _nothing_in_flight(stack)


def test_a_missing_key_file_skips_the_tick_with_the_reason(stack, tmp_path):
    stack.lay_out(*EPNS)
    stack.configure(**{"key-file": str(tmp_path / "gone" / "id_ed25519")})
    tick, _ = ticker(stack)
    result = tick()
    assert isinstance(result, dg.SkipReason)
    assert "key-file" in result.skip_message and "does not exist" in result.skip_message


def test_looking_for_new_data_with_a_missing_key_file_logs_and_goes_on(stack, tmp_path, caplog):
    stack.configure(**{"key-file": str(tmp_path / "gone" / "id_ed25519")})
    facts = Facts(visits=[], on_sftp=["12282a"], refreshed_at=0.0)
    caplog.set_level(logging.WARNING)
    settings = stack.settings().model_copy(update={"resync_days": 30})
    visit = Visit.from_dict(
        {
            "id": 1,
            "epn": "12282a",
            "start_time": "2026-11-01T00:00:00+00:00",
            "end_time": "2026-11-02T00:00:00+00:00",
            "principal_scientist": None,
            "data_scientists": [],
        }
    )
    facts.visits = [visit]
    # A verified sync on record, so that the source would be listed.
    stack.instance.add_dynamic_partitions(EPN_PARTITIONS_NAME, ["12282a"])
    stack.instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key="epn_data",
            partition="12282a",
            metadata={"verified": True, "source_digest": "x", "source_files": 1, "source_bytes": 1},
        )
    )
    look_for_new_data(
        stack.instance,
        settings,
        SshSourceResource(),
        logging.getLogger("test"),
        facts,
        {"12282a"},
        datetime(2026, 11, 20, tzinfo=UTC),
        time.monotonic(),
    )
    assert facts.changed == {}
    assert "key-file" in caplog.text


def test_an_epn_folder_that_cannot_take_its_manifest_fails_the_epn_naming_the_path(stack):
    """rsync fills data/, but the checksum manifest beside it cannot be written (the EPN's folder
    is immutable): an OSError after the transfer fails that EPN alone, naming the path."""
    stack.lay_out(*EPNS)
    epn_folder = stack.destination_root / "ny79" / "12282a"
    (epn_folder / "data").mkdir(parents=True)
    with immutable(epn_folder):
        result = _batch(stack, EPNS)
    text = failure_text(result)
    assert "Operation not permitted" in text and str(epn_folder) in text, text
    assert "check destination-root-path and its permissions" in text, text
    assert _outcomes(stack, result) == {"12282a": "failed", "13001a": "home"}
    assert stack.ignored() == ["13001a"]
    _nothing_in_flight(stack)
