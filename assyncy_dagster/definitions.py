"""The code location: `assyncy_dagster.definitions:defs`, built from $ASSYNCY_CONFIG."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import dagster as dg

from .assets.epn_data import epn_data, epn_data_matches_source
from .assets.fixity import epn_data_intact_at_home
from .assets.report import repatriation_report
from .assets.visits import portal_visits
from .config import CONFIG_ENV, config_path_from_env, load_settings
from .jobs import (
    build_digest_schedule,
    build_fixity_schedule,
    build_report_schedule,
    fixity_audit_job,
    repatriation_job,
    repatriation_report_job,
    unknown_epn_alert_job,
    verification_job,
)
from .resources.portal import PortalResource
from .resources.settings import AssyncyConfigResource, NoStorageIOManager
from .resources.smtp import SmtpResource
from .resources.ssh_source import SshSourceResource
from .sensors.epn_sensor import build_epn_sensor, sensor_interval_seconds
from .sensors.failure_alerts import repatriation_failure_alert
from .sensors.report_refresh import repatriation_report_refresh


def build_definitions(config_path: str | os.PathLike[str] | None = None) -> dg.Definitions:
    """Wire assets, jobs, sensors and resources for one config.yml.

    The config file is $ASSYNCY_CONFIG; `config_path` (mxsync --config, the
    demo) sets that variable for this process and the run workers it starts,
    so that resources read it from one place at every use. A missing or
    invalid config raises ConfigError listing every problem, the same text
    `assyncy check-config` prints.
    """
    if config_path is not None:
        os.environ[CONFIG_ENV] = str(Path(config_path).absolute())
    settings = load_settings(config_path_from_env(None))
    for warning in settings.insecure_warnings():  # at every start of the daemon, the UI, the CLI
        logging.getLogger("assyncy").warning(warning)
    return dg.Definitions(
        assets=[portal_visits, epn_data, repatriation_report],
        asset_checks=[epn_data_matches_source, epn_data_intact_at_home],
        jobs=[repatriation_job, verification_job, unknown_epn_alert_job, repatriation_report_job, fixity_audit_job],
        sensors=[
            build_epn_sensor(sensor_interval_seconds(settings)),
            repatriation_failure_alert,
            repatriation_report_refresh,
        ],
        schedules=[
            build_digest_schedule(settings.schedule_timezone),
            build_report_schedule(settings.schedule_timezone),
            build_fixity_schedule(settings.schedule_timezone),
        ],
        resources=build_resources(),
        # The heavy work is rsync's, in its own process; running the steps inside
        # the run's process saves a Python start-up per step and still honours the
        # rsync pool.
        executor=dg.in_process_executor,
    )


def build_resources() -> dict[str, Any]:
    """The outside world: portal, SFTP/rsync endpoint, SMTP and config.yml itself.

    None of them has a setting that can be changed at launch time (the UI's
    launchpad, GraphQL): each reads config.yml ($ASSYNCY_CONFIG) at use, and
    the IO manager stores nothing (see NoStorageIOManager)."""
    return {
        "assyncy_config": AssyncyConfigResource(),
        "portal": PortalResource(),
        "sftp": SshSourceResource(),
        "smtp": SmtpResource(),
        "io_manager": NoStorageIOManager(),
    }


@dg.definitions
def defs() -> dg.Definitions:
    """Loaded by Dagster (webserver, daemon, CLI) from $ASSYNCY_CONFIG; importing
    this module has no side effects, so mxsync and the demo can build their own."""
    return build_definitions()
