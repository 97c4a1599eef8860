"""The repatriation report's refresh sensor, on an in-memory instance."""

import time

import dagster as dg

from assyncy_dagster.sensors.report_refresh import repatriation_report_refresh


def test_report_refresh_starts_by_watching_from_now_on():
    with dg.DagsterInstance.ephemeral() as instance:
        context = dg.build_sensor_context(instance=instance)
        first = repatriation_report_refresh(context)
        assert isinstance(first, dg.SkipReason) and "from now on" in first.skip_message
        assert float(context.cursor) <= time.time()
