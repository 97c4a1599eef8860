"""The code location: `assyncy_dagster.definitions:defs`, built from $ASSYNCY_CONFIG."""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg

from .assets.epn_data import epn_data, epn_data_matches_source
from .assets.visits import portal_visits
from .config import Settings, config_path_from_env, load_settings
from .jobs import (
    build_digest_schedule,
    repatriation_job,
    unknown_epn_alert_job,
    verification_job,
)
from .resources.portal import PortalResource
from .resources.settings import AssyncyConfigResource
from .resources.sftp import SftpResource
from .resources.smtp import SmtpResource
from .sensors.epn_sensor import build_epn_sensor, sensor_interval_seconds
from .sensors.failure_alerts import repatriation_failure_alert


def build_definitions(config_path: str | None = None, *, execute: bool | None = None) -> dg.Definitions:
    """Wire assets, jobs, sensors and resources for one config.yml.

    A missing or invalid config raises ConfigError listing every problem, the
    same text `assyncy check-config` prints. `execute` overrides the file's
    `execute` (mxsync --execute).
    """
    path = config_path_from_env(config_path).absolute()
    settings = load_settings(path)
    for warning in settings.insecure_warnings():  # at every start of the daemon, the UI, the CLI
        logging.getLogger("assyncy").warning(warning)
    return dg.Definitions(
        assets=[portal_visits, epn_data],
        asset_checks=[epn_data_matches_source],
        jobs=[repatriation_job, verification_job, unknown_epn_alert_job],
        sensors=[build_epn_sensor(sensor_interval_seconds(settings)), repatriation_failure_alert],
        schedules=[build_digest_schedule(settings.schedule_timezone)],
        resources=build_resources(path, settings, execute=execute),
        # The heavy work is rsync's, in its own process; running the steps inside
        # the run's process saves a Python start-up per step and still honours the
        # rsync pool.
        executor=dg.in_process_executor,
    )


def build_resources(path: Path, settings: Settings, *, execute: bool | None = None) -> dict[str, object]:
    """The outside world, wired once: portal, SFTP/rsync endpoint, SMTP and config.yml itself."""
    return {
        "assyncy_config": AssyncyConfigResource(config_path=str(path), execute=execute),
        "portal": PortalResource(config_path=str(path)),
        "sftp": SftpResource.from_settings(settings),
        "smtp": SmtpResource(config_path=str(path)),
    }


@dg.definitions
def defs() -> dg.Definitions:
    """Loaded by Dagster (webserver, daemon, CLI) from $ASSYNCY_CONFIG; importing
    this module has no side effects, so mxsync and the demo can build their own."""
    return build_definitions()
