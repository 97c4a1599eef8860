"""A real portal API (the simulator) on a free port, and helpers to talk to it."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from assyncy_dagster.config import Equipment
from assyncy_dagster.portal import PortalClient
from assyncy_dagster.portal_sim import PortalSimulator, equipment_credentials

__all__ = ["portal_sim", "make_portal_sim"]


def _person(first: str, last: str) -> dict[str, str]:
    return {"first_names": first, "last_name": last, "email": f"{first.lower()}.{last.lower()}@example.edu"}


# Two beamlines with their own accounts, so that a token of one cannot read the other.
PORTAL_DATA: dict[str, Any] = {
    "token-ttl-seconds": 3600,
    "equipment": [
        {
            "id": 23,
            "username": "mx1-user@example.edu",
            "password": "mx1-Pa55word",
            "client_name": "mx1-client",
            "client_password": "mx1-Cl1ent-secret",
            "visits": [
                {
                    "id": 1001,
                    "epn": "12282a",
                    "start_time": "now-20d",
                    "end_time": "now-19d",
                    "principal_scientist": _person("Ada", "Lovelace"),
                    "data_scientists": [_person("Alan", "Turing"), _person("Grace", "Hopper")],
                },
                {
                    "id": 1002,
                    "epn": "13001a",
                    "start_time": "now-5d",
                    "end_time": "now-4d",
                    "principal_scientist": _person("Rosalind", "Franklin"),
                    "data_scientists": [],
                },
            ],
        },
        {
            "id": 24,
            "username": "mx2-user@example.edu",
            "password": "mx2-Pa55word",
            "client_name": "mx2-client",
            "client_password": "mx2-Cl1ent-secret",
            "visits": [
                {
                    "id": 2001,
                    "epn": "12282b",
                    "start_time": "now-10d",
                    "end_time": "now-9d",
                    "principal_scientist": _person("Ada", "Lovelace"),
                    "data_scientists": [_person("Alan", "Turing")],
                },
                {
                    "id": 2002,
                    "epn": "13001b",
                    "start_time": "now-1d",
                    "end_time": "now+1d",
                    "principal_scientist": None,
                    "data_scientists": [],
                },
            ],
        },
    ],
}


def portal_data() -> dict[str, Any]:
    """A fresh copy of the default data, safe to edit in a test."""
    return copy.deepcopy(PORTAL_DATA)


def portal_secrets(data: dict[str, Any] | None = None) -> list[str]:
    """Every password and client password in simulator data."""
    data = data or PORTAL_DATA
    return [e[k] for e in data["equipment"] for k in ("password", "client_password")]


def equipment_for(data: dict[str, Any] | None = None) -> list[Equipment]:
    """config.yml `equipment` entries matching the accounts in simulator data."""
    return [Equipment(**entry) for entry in equipment_credentials(data or PORTAL_DATA)]


def client_for(sim: PortalSimulator, equipment: list[Equipment] | None = None, **kwargs: Any) -> PortalClient:
    """A client of `sim` with the default accounts and test-speed retries (override with kwargs)."""
    options: dict[str, Any] = {"timeout": 5.0, "retries": 2, "backoff": 0.01}
    options.update(kwargs)
    return PortalClient(sim.url, equipment if equipment is not None else equipment_for(), **options)


@pytest.fixture
def make_portal_sim() -> Iterator[Callable[..., PortalSimulator]]:
    """Factory: `make_portal_sim(data=None, **kwargs)` starts a simulator; all are stopped after the test."""
    started: list[PortalSimulator] = []

    def make(data: dict[str, Any] | str | None = None, **kwargs: Any) -> PortalSimulator:
        sim = PortalSimulator(portal_data() if data is None else data, **kwargs)
        sim.start()
        started.append(sim)
        return sim

    try:
        yield make
    finally:
        for sim in started:
            sim.stop()


@pytest.fixture
def portal_sim(make_portal_sim: Callable[..., PortalSimulator]) -> PortalSimulator:
    """A started simulator serving `PORTAL_DATA` (equipment 23 and 24, two visits each)."""
    return make_portal_sim()
