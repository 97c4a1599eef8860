"""What ships: without the demo extra, the demo says what to install; and the package reads etc/ through
one path (the production code's imports are checked in tests/integration/test_packaging.py)."""

from __future__ import annotations

import sys

from assyncy_dagster.cli import main
from assyncy_dagster.etc_files import etc_path
from tests.support.helpers import REPO


def test_demo_without_the_demo_extra_says_what_to_install(monkeypatch, tmp_path, capsys):
    # As if the demo extra were not installed: None in sys.modules fails an import.
    for name in ["aiosmtpd", *(m for m in sys.modules if m.startswith("aiosmtpd."))]:
        monkeypatch.setitem(sys.modules, name, None)
    for name in ("assyncy_dagster.demo", "assyncy_dagster.testing.smtp_sink"):
        monkeypatch.delitem(sys.modules, name, raising=False)  # imported afresh, as in a new process
    monkeypatch.chdir(tmp_path)

    assert main(["demo", "--once"]) == 2
    assert "pip install 'assyncy-dagster[demo]'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_packages_etc_is_the_repositorys_etc():
    """One copy of each file: in a checkout, assyncy_dagster/etc is a symlink to etc/."""
    assert etc_path().resolve() == REPO / "etc"
    assert etc_path("demo-visits.yml").is_file()
