"""A real SMTP server (aiosmtpd) that keeps every message it receives."""

from __future__ import annotations

import pytest

from assyncy_dagster.testing.smtp_sink import SmtpSink

__all__ = ["smtp_sink"]


@pytest.fixture
def smtp_sink():
    """A started `SmtpSink` on 127.0.0.1 and a free port; stopped after the test."""
    sink = SmtpSink()
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()
