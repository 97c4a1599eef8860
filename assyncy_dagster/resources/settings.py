"""The config file as a resource, read afresh at every use."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from ..config import Settings, load_settings


class AssyncyConfigResource(dg.ConfigurableResource):
    """config.yml (the file named by ASSYNCY_CONFIG).

    Read at every use rather than once at start-up, so that an admin's edit to
    `epn_cap_map` or ignore.yml takes effect at the next sensor tick or run
    without restarting anything. Secrets stay in the file (or its `${ENV}`
    references) and never enter Dagster's own config or the UI.
    """

    config_path: str = Field(description="Path of config.yml; secrets are read from it at use, never stored by Dagster.")
    execute: bool | None = Field(
        default=None, description="Overrides config.yml's `execute` (mxsync --execute); unset follows the file."
    )

    def settings(self) -> Settings:
        settings = load_settings(self.config_path)
        if self.execute is not None:
            settings = settings.model_copy(update={"execute": self.execute})
        return settings
