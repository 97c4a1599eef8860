"""What ships: without the demo distribution, `assyncy demo` says what to install, and with it the
subcommands are there; the package reads etc/ through one path (the production code's imports are
checked in tests/integration/test_packaging.py, the wheels in tests/e2e/test_wheel.py)."""

from __future__ import annotations

from assyncy_dagster import cli
from assyncy_dagster.etc_files import etc_path
from tests.support.helpers import REPO


def test_demo_without_the_demo_distribution_says_what_to_install(monkeypatch, tmp_path, capsys):
    # As if assyncy-dagster-demo were not installed: no entry point adds its subcommands (the
    # e2e wheel test installs the product's wheel alone for real).
    monkeypatch.setattr(cli, "entry_points", lambda group: [])
    monkeypatch.chdir(tmp_path)

    assert cli.main(["demo", "--once"]) == 2
    assert cli.main(["portal-sim", "--port", "0"]) == 2
    assert capsys.readouterr().err.count("the demo is not installed: pip install 'assyncy-dagster[demo]'") == 2
    assert list(tmp_path.iterdir()) == []


def test_the_demo_distribution_adds_its_subcommands():
    """Installed (as `make setup` does), its entry points give `assyncy` the demo and the portal simulator."""
    parser = cli.build_parser()
    assert parser.parse_args(["demo", "--once"]).once is True
    assert parser.parse_args(["portal-sim", "--port", "0"]).port == 0


def test_the_packages_etc_is_the_repositorys_etc():
    """One copy of each file: in a checkout, assyncy_dagster/etc is a symlink to etc/."""
    assert etc_path().resolve() == REPO / "etc"
    assert etc_path("demo-visits.yml").is_file()
