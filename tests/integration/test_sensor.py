"""epn_sensor on a real instance, against the portal simulator and a real sshd."""

import dagster as dg
import yaml

from assyncy_dagster.definitions import build_definitions
from assyncy_dagster.names import ALERT_JOB, REPATRIATION_JOB, RSYNC_POOL
from assyncy_dagster.partitions import EPN_PARTITIONS_NAME
from assyncy_dagster.run_configs import alert_epns, batch_epns
from tests.support.helpers import sensor_tick

DEMO_EPNS = ("12282a", "12282b", "13001a", "13001b", "14500a", "14777a")


def first_tick(stack):
    """epn_sensor's evaluation from no cursor (each call asks the portal afresh), its partition requests applied."""
    return sensor_tick(stack)[0]


def requested(result, job):
    if not isinstance(result, dg.SensorResult):
        return []
    return [r for r in result.run_requests if r.job_name == job]


def repatriations(result):
    return sorted(epn for r in requested(result, REPATRIATION_JOB) for epn in batch_epns(r.run_config))


def alerted_epns(result):
    return [epn for r in requested(result, ALERT_JOB) for epn in alert_epns(r.run_config)]


def test_new_epns_become_partitions_and_due_ones_are_requested(stack):
    stack.lay_out(*DEMO_EPNS)
    result = first_tick(stack)
    assert sorted(stack.instance.get_dynamic_partitions(EPN_PARTITIONS_NAME)) == sorted(DEMO_EPNS)
    assert repatriations(result) == ["12282a", "12282b", "13001a"]  # 13001b is still running
    assert alerted_epns(result) == ["14500a", "14777a"]
    assert len(requested(result, ALERT_JOB)) == 1, "one alert run per tick, not one per EPN"
    for request in requested(result, REPATRIATION_JOB):
        assert request.run_key and request.tags["assyncy/mode"] == "execute"


def test_epn_whose_folder_is_not_on_the_host_waits(stack):
    stack.lay_out("12282a")
    assert repatriations(first_tick(stack)) == ["12282a"]
    assert "12282b" in stack.instance.get_dynamic_partitions(EPN_PARTITIONS_NAME)  # known from the portal


def test_the_sensor_never_requests_an_epn_recorded_in_ignore_yml(stack):
    stack.lay_out("12282a", "12282b")
    stack.settings().ignore.write_text(yaml.safe_dump({"previouslySynched": ["12282a"]}))
    assert repatriations(first_tick(stack)) == ["12282b"]


def test_mapping_edit_is_picked_up_at_the_next_first_tick(stack):
    stack.lay_out("14500a")
    first = first_tick(stack)
    assert repatriations(first) == [] and alerted_epns(first) == ["14500a"]
    stack.configure(epn_cap_map={"12282": "ny79", "13001": "ab12", "14500": "zz01"})
    assert repatriations(first_tick(stack)) == ["14500a"]


def test_portal_down_skips_the_tick_and_loses_nothing(stack):
    stack.lay_out("12282a")
    stack.portal.set_faults(down=True)
    result = first_tick(stack)
    assert isinstance(result, dg.SkipReason) and "portal unavailable" in result.skip_message
    assert stack.instance.get_dynamic_partitions(EPN_PARTITIONS_NAME) == []
    stack.portal.set_faults(down=False)
    assert repatriations(first_tick(stack)) == ["12282a"]


def test_queued_or_running_epn_is_not_requested_again(stack):
    stack.lay_out("12282a")
    [request] = requested(first_tick(stack), REPATRIATION_JOB)
    job = build_definitions(str(stack.config_path)).resolve_job_def(REPATRIATION_JOB)
    stack.instance.create_run_for_job(
        job_def=job, run_config=request.run_config, tags=request.tags, status=dg.DagsterRunStatus.NOT_STARTED
    )
    assert repatriations(first_tick(stack)) == []


def test_epn_materialised_from_the_ui_is_not_requested_while_that_run_is_in_flight(stack):
    stack.lay_out("12282a", "12282b")
    first_tick(stack)  # adds the partitions
    defs = build_definitions(str(stack.config_path))
    asset_job = defs.resolve_implicit_global_asset_job_def()
    # What the UI's Materialize button creates: an asset run of epn_data for one partition.
    stack.instance.create_run_for_job(
        job_def=asset_job,
        asset_selection=frozenset({dg.AssetKey("epn_data")}),
        tags={"dagster/partition": "12282a"},
        status=dg.DagsterRunStatus.NOT_STARTED,
    )
    assert repatriations(first_tick(stack)) == ["12282b"]


def test_a_backlog_is_shared_out_in_batches_over_max_tasks(stack):
    stack.configure(**{"max-tasks": 2, "max-epns-per-run": 2})
    stack.lay_out("12282a", "12282b", "13001a")
    batches = [batch_epns(r.run_config) for r in requested(first_tick(stack), REPATRIATION_JOB)]
    assert sorted(e for b in batches for e in b) == ["12282a", "12282b", "13001a"]
    assert [len(b) for b in batches] == [2, 1]


def test_dry_run_is_not_repeated_every_first_tick(stack):
    stack.configure(execute=False)
    stack.lay_out("12282a")
    [request] = requested(first_tick(stack), REPATRIATION_JOB)
    assert request.tags["assyncy/mode"] == "dry-run"
    job = build_definitions(str(stack.config_path)).resolve_job_def(REPATRIATION_JOB)
    result = job.execute_in_process(instance=stack.instance, run_config=request.run_config, tags=request.tags)
    assert result.success
    assert repatriations(first_tick(stack)) == []
    assert stack.ignored() == []


def test_failed_repatriation_waits_for_backoff_then_gets_a_new_run_key(stack):
    stack.configure(**{"retry-backoff-minutes": 60})
    stack.lay_out("12282a")
    [first] = requested(first_tick(stack), REPATRIATION_JOB)
    (stack.source / "12282a").rename(stack.source / "moved-away")  # rsync will fail: folder gone
    job = build_definitions(str(stack.config_path)).resolve_job_def(REPATRIATION_JOB)
    failed = job.execute_in_process(
        instance=stack.instance, run_config=first.run_config, tags=first.tags, raise_on_error=False
    )
    assert not failed.success
    (stack.source / "moved-away").rename(stack.source / "12282a")
    held = first_tick(stack)
    assert repatriations(held) == []
    stack.configure(**{"retry-backoff-minutes": 0.0001})
    [retry] = requested(first_tick(stack), REPATRIATION_JOB)
    assert retry.run_key != first.run_key


def test_tick_sets_the_rsync_pool_to_max_tasks(stack):
    stack.configure(**{"max-tasks": 3})
    stack.lay_out("12282a")
    first_tick(stack)
    assert stack.instance.event_log_storage.get_concurrency_info(RSYNC_POOL).slot_count == 3
