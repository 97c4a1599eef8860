"""The whole stand-in: portal simulator, real sshd, SMTP sink, config.yml and a
real Dagster instance in a temporary DAGSTER_HOME."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest
import yaml

from assyncy_dagster.assets.epn_data import epn_data, epn_data_matches_source
from assyncy_dagster.assets.visits import portal_visits
from assyncy_dagster.config import Settings, load_settings
from assyncy_dagster.definitions import build_resources
from assyncy_dagster.partitions import EPN_PARTITIONS_NAME
from assyncy_dagster.portal_sim import PortalSimulator
from assyncy_dagster.testing.smtp_sink import SmtpSink
from assyncy_dagster.testing.sshd import LocalSshd
from assyncy_dagster.testing.stack import (
    DEMO_VISITS,
    ETC,
    lay_out_epns,
    mx_frames,
    write_config,
)

__all__ = ["stack", "Stack"]

_beamlines = itertools.count(1)


@dataclass
class Stack:
    portal: PortalSimulator
    smtp: SmtpSink
    sshd: LocalSshd
    beamline: str
    root: Path
    config_path: Path
    instance: dg.DagsterInstance
    overrides: dict = field(default_factory=dict)

    @property
    def source(self) -> Path:
        """On-disk folder the SFTP host serves as /data/<beamline>."""
        return self.sshd.beamline_dir(self.beamline)

    @property
    def destination_root(self) -> Path:
        return self.root / "scratch"

    def configure(self, **overrides: object) -> Path:
        """(Re)write config.yml; keys as in config.yml (`execute`, `epn_cap_map`, ...)."""
        self.overrides.update(overrides)
        extra = {"beamline": self.beamline, **self.overrides}
        return write_config(
            self.config_path,
            portal_url=self.portal.url,
            sshd=self.sshd,
            smtp_port=self.smtp.port,
            destination_root=self.destination_root,
            epn_cap_map=extra.pop("epn_cap_map", {"12282": "ny79", "13001": "ab12"}),
            execute=extra.pop("execute", True),
            max_tasks=extra.pop("max-tasks", 2),
            extra=extra,
        )

    def settings(self) -> Settings:
        return load_settings(self.config_path)

    def lay_out(self, *epns: str, frames: int = 3, size: int = 32 * 1024) -> None:
        lay_out_epns(self.sshd, {e: mx_frames(frames, size) for e in epns}, beamline=self.beamline)

    def destination(self, project: str, epn: str) -> Path:
        return self.destination_root / project / epn / "data"

    def ignored(self) -> list[str]:
        path = self.settings().ignore
        return (yaml.safe_load(path.read_text()) or {}).get("previouslySynched", []) if path.exists() else []

    def materialize(self, epn: str, run_config: dict | None = None) -> dg.ExecuteInProcessResult:
        """Materialise portal_visits + epn_data (and its check) for one EPN, as the UI would."""
        if epn not in self.instance.get_dynamic_partitions(EPN_PARTITIONS_NAME):
            self.instance.add_dynamic_partitions(EPN_PARTITIONS_NAME, [epn])
        settings = self.settings()
        return dg.materialize(
            [portal_visits, epn_data, epn_data_matches_source],
            partition_key=epn,
            instance=self.instance,
            resources=build_resources(),
            run_config=run_config,
            raise_on_error=False,
        )


@pytest.fixture
def stack(sshd: LocalSshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """Demo portal data (12282a/b and 13001a ended and mapped, 13001b running,
    14500a and 14777a unmapped), a fresh beamline folder on the session's sshd,
    an SMTP sink, config.yml and an instance in a temporary DAGSTER_HOME."""
    beamline = f"stack{next(_beamlines)}"
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ETC / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    config_path = tmp_path / "etc" / "config.yml"
    monkeypatch.setenv("ASSYNCY_CONFIG", str(config_path))
    with PortalSimulator(DEMO_VISITS) as portal, SmtpSink() as smtp, dg.DagsterInstance.get() as instance:
        built = Stack(portal, smtp, sshd, beamline, tmp_path, config_path, instance)
        built.configure()
        try:
            yield built
        finally:
            shutil.rmtree(sshd.beamline_dir(beamline), ignore_errors=True)
