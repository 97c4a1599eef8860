"""The `assyncy` command: check-config and add-epn."""

import dagster as dg
import pytest
import yaml

from assyncy_dagster.cli import main
from assyncy_dagster.partitions import EPN_PARTITIONS_NAME
from assyncy_dagster_demo.testing.stack import DEMO_VISITS
from tests.support.helpers import BIN


def test_check_config_passes_a_good_config_and_masks_secrets(stack, capsys):
    assert main(["check-config", "--config", str(stack.config_path)]) == 0
    out = capsys.readouterr().out
    assert "config OK" in out
    assert "demo-password" not in out and "demo-client-password" not in out
    assert "********" in out


def test_check_config_lists_every_problem(stack, tmp_path, capsys):
    key = tmp_path / "loose_key"
    key.write_text("not really a key")
    key.chmod(0o644)
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "epnalert-text.j2").write_text("{{ epn_detail }}")  # typo: undefined variable
    stack.configure(
        **{
            "key-file": str(key),
            "epnalert-template-folder": str(templates),
        }
    )
    data = yaml.safe_load(stack.config_path.read_text())
    data["destination-root-path"] = str(tmp_path / "no-such-root")
    stack.config_path.write_text(yaml.safe_dump(data))
    assert main(["check-config", "--config", str(stack.config_path)]) != 0
    err = capsys.readouterr().err
    assert "key-file" in err and "chmod 600" in err
    assert "epnalert-html.j2" in err  # missing template
    assert "epnalert-text.j2" in err  # does not render
    assert "destination-root-path" in err and "does not exist" in err


def test_add_epn_adds_partitions_and_says_whether_they_are_mapped(stack, capsys):
    assert main(["add-epn", "12282a", "14500a", "--config", str(stack.config_path)]) == 0
    out = capsys.readouterr().out
    assert "12282a: added -> project ny79" in out
    assert "14500a: added (not mapped" in out
    with dg.DagsterInstance.get() as instance:
        assert sorted(instance.get_dynamic_partitions(EPN_PARTITIONS_NAME)) == ["12282a", "14500a"]
    assert main(["add-epn", "12282a"]) == 0
    assert "already present" in capsys.readouterr().out


@pytest.mark.parametrize("hostile", ["../x", "12282a;rm -rf /", "12282A", ""])
def test_add_epn_refuses_invalid_names_and_adds_nothing(stack, capsys, hostile):
    assert main(["add-epn", "12282a", hostile]) == 2
    assert "not a valid EPN" in capsys.readouterr().err
    with dg.DagsterInstance.get() as instance:
        assert instance.get_dynamic_partitions(EPN_PARTITIONS_NAME) == []


def test_portal_sim_command_serves_the_api_until_sigterm(tmp_path):
    import signal
    import subprocess

    import requests

    proc = subprocess.Popen(
        [str(BIN / "assyncy"), "portal-sim", "--visits", str(DEMO_VISITS)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        first = proc.stdout.readline()
        assert first.startswith("portal simulator listening on http://127.0.0.1:")
        url = first.rsplit(" ", 1)[-1].strip()
        token = requests.post(
            f"{url}/api/v1/oauth/token",
            auth=("demo-client", "demo-client-password"),
            data={"username": "demo-user", "password": "demo-password", "grant_type": "password"},
            timeout=10,
        ).json()["data"]["access_token"]
        visits = requests.get(f"{url}/api/v1/equipment/23/visits", params={"access_token": token}, timeout=10)
        assert "12282a" in {v["epn"] for v in visits.json()["data"]["visits"]}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
