"""A real Redis server (Debian's redis-server) on a free loopback port: the Celery broker
and result backend of the scale-out tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from assyncy_dagster.testing.redis_server import LocalRedis, RedisUnavailable

__all__ = ["redis_server"]


@pytest.fixture
def redis_server() -> Iterator[LocalRedis]:
    """A fresh, password-protected server that keeps nothing on disk; stopped with its
    process group after the test."""
    try:
        with LocalRedis() as server:
            yield server
    except RedisUnavailable as exc:  # raised before the yield only: the machine has no redis-server
        pytest.skip(str(exc))
