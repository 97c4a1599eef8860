"""The run config of a repatriation batch and of an unknown-EPN alert, and the EPNs read back from it.

The one spelling of the path `ops → <op> → config → epns`: the sensor and mxsync write it
(tick.py), and the sensor's log, mxsync's workers and the tests read it back. No Dagster imports:
a run config is plain nested data (RunRequest.run_config, DagsterRun.run_config).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .names import ALERT_OP, REPATRIATION_OP


def batch_run_config(epns: Iterable[str], *, execute: bool | None = None) -> dict[str, Any]:
    """The run config of a repatriation run (job `repatriate_epn`) for `epns`; `execute` None
    follows config.yml's `execute` (the op's other choices keep their defaults)."""
    config: dict[str, Any] = {"epns": list(epns)}
    if execute is not None:
        config["execute"] = execute
    return _op_config(REPATRIATION_OP, config)


def batch_epns(run_config: Mapping[str, Any] | None) -> list[str]:
    """The EPNs a repatriation run's config names; empty for any other run or none."""
    return _op_epns(run_config, REPATRIATION_OP)


def batch_options(run_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """A repatriation run's choices other than its EPNs (`execute`, `allow_running_visit`, ...):
    two runs with equal options would bring any EPN home the same way."""
    ops = (run_config or {}).get("ops") or {}
    config = (ops.get(REPATRIATION_OP) or {}).get("config") or {}
    return {key: value for key, value in config.items() if key != "epns"}


def alert_run_config(epns: Iterable[str]) -> dict[str, Any]:
    """The run config of an unknown-EPN alert (job `unknown_epn_alert`) about `epns`."""
    return _op_config(ALERT_OP, {"epns": list(epns)})


def alert_epns(run_config: Mapping[str, Any] | None) -> list[str]:
    """The EPNs an unknown-EPN alert run's config names; empty for a digest or any other run."""
    return _op_epns(run_config, ALERT_OP)


def _op_config(op: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"ops": {op: {"config": config}}}


def _op_epns(run_config: Mapping[str, Any] | None, op: str) -> list[str]:
    ops = (run_config or {}).get("ops") or {}
    return list(((ops.get(op) or {}).get("config") or {}).get("epns") or [])
