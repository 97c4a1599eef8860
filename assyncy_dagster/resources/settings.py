"""config.yml as a resource, and the one place its path comes from."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from ..config import Settings, config_path_from_env, load_settings


def config_path() -> Path:
    """The code location's config.yml: $ASSYNCY_CONFIG, set by the service's environment
    (or by `build_definitions(path)` for mxsync and the demo). Never run config: a
    path, host or key that a UI visitor could choose would run their code with the
    facility's SSH key and passwords."""
    return config_path_from_env(None).absolute()


def current_settings() -> Settings:
    """config.yml as it is now: read at every use, so every edit applies at the next
    tick or run, whichever setting it is (hosts, keys, epn_cap_map, ...)."""
    return load_settings(config_path())


class AssyncyConfigResource(dg.ConfigurableResource):
    """config.yml (the file named by ASSYNCY_CONFIG).

    Read at every use rather than once at start-up, so that an admin's edit to
    any setting takes effect at the next sensor tick or run without restarting
    anything. It has no launch-time settings at all: which file it reads is the
    service's choice, not a UI visitor's. Secrets stay in the file (or its
    `${ENV}` references) and never enter Dagster's own config or the UI.
    """

    def settings(self) -> Settings:
        return current_settings()


class NoStorageIOManager(dg.ConfigurableIOManager):
    """Step outputs are not kept: no asset or op here loads another's stored value
    (epn_data looks the visits up itself), so there is nothing to store, and no
    folder that a launch could point elsewhere."""

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        return None

    def load_input(self, context: dg.InputContext) -> object:
        raise dg.Failure(description=f"{context.name}: assyncy-dagster stores no step outputs to load")
