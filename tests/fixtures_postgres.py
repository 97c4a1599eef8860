"""A real PostgreSQL server on a free loopback port, for the PostgreSQL storage and scale-out tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from assyncy_dagster.testing.postgres import PostgresServer, PostgresUnavailable, local_postgres

__all__ = ["PostgresServer", "postgres_server"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A fresh PostgreSQL cluster in a temporary folder, with database `dagster` owned by
    account `assyncy` (password authentication over TCP); stopped and removed afterwards."""
    try:
        with local_postgres() as server:
            yield server
    except PostgresUnavailable as exc:  # raised before the yield only: the machine has no PostgreSQL
        pytest.skip(str(exc))
