"""The Australian Synchrotron User Portal as a resource."""

from __future__ import annotations

import logging
from datetime import datetime

import dagster as dg

from ..config import Settings
from ..domain import Visit, VisitsAnswer
from ..portal.client import PortalClient
from .settings import current_settings


class PortalResource(dg.ConfigurableResource):
    """The synchrotron's User Portal API (`base-url` in config.yml): who had beamtime, when.

    Each `equipment` entry of config.yml is one beamline account; `visits`
    asks every one of them and returns their visits merged, sorted by start
    time. The address and credentials are read from config.yml at every use,
    so an edit takes effect at the next run; none of them can be set at launch
    time, and they never enter Dagster's config, the UI or the run logs. A
    portal that cannot be reached or answers nonsense raises `PortalError`
    naming the beamline and the cause, never "no visits".
    """

    def settings(self) -> Settings:
        return current_settings()

    def client(self, logger: logging.Logger | None = None) -> PortalClient:
        """A client for the portal and accounts config.yml names, logging to `logger` (e.g. `context.log`)."""
        return PortalClient.from_settings(self.settings(), logger=logger)

    def visits(self, since: datetime, until: datetime, logger: logging.Logger | None = None) -> list[Visit]:
        """Visits overlapping [since, until] on every configured beamline, sorted by (start_time, epn)."""
        return self.answer(since, until, logger=logger).visits

    def answer(self, since: datetime, until: datetime, logger: logging.Logger | None = None) -> VisitsAnswer:
        """The visits of `visits`, and the ones the portal sent malformed: EPN -> why (such an EPN is held back)."""
        with self.client(logger=logger) as client:
            return client.answer(since, until)
