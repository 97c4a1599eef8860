"""The demo's UI port: the one asked for, unless another process holds it."""

from __future__ import annotations

import socket

from assyncy_dagster_demo.demo import choose_port


def test_the_ui_port_is_the_one_asked_for_unless_it_is_taken():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        assert choose_port(port) != port
    assert choose_port(port) == port
