"""The SSH side (transfer/endpoint.py): the ssh command line, and the settings it refuses. Pure, no processes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from assyncy_dagster.transfer.endpoint import SshEndpoint
from assyncy_dagster.transfer.errors import SshConfigError
from tests.support.helpers import facility_endpoint


def test_ssh_command_is_key_only_batch_and_strict():
    cmd = facility_endpoint().ssh_command()
    assert cmd[:5] == ["ssh", "-i", "/etc/assyncy/id_ed25519", "-p", "2222"]
    for option in (
        "IdentitiesOnly=yes",
        "BatchMode=yes",
        "StrictHostKeyChecking=yes",
        "UserKnownHostsFile=/etc/assyncy/known_hosts",
        "GlobalKnownHostsFile=/dev/null",
    ):
        assert cmd[cmd.index(option) - 1] == "-o"
    assert any(part.startswith("ConnectTimeout=") for part in cmd)
    assert any(part.startswith("ServerAliveInterval=") for part in cmd)


def test_ssh_command_without_known_hosts_file_uses_ssh_defaults():
    cmd = facility_endpoint(known_hosts_file=None).ssh_command()
    assert not any("KnownHostsFile" in part for part in cmd)
    assert "StrictHostKeyChecking=yes" in cmd


def test_endpoint_from_settings_uses_configured_user_and_root():
    settings = SimpleNamespace(
        host="h.example",
        ssh_port=22,
        sftp_user="sync",
        key_file=Path("/k"),
        known_hosts_file=None,
        remote_root="/data/mx",
    )
    ep = SshEndpoint.from_settings(settings)
    assert (ep.host, ep.port, ep.user, ep.key_file, ep.known_hosts_file, ep.source_root) == (
        "h.example",
        22,
        "sync",
        Path("/k"),
        None,
        "/data/mx",
    )
    assert ep.remote("/data/mx/") == "sync@h.example:/data/mx/"


@pytest.mark.parametrize("path", ["/keys/my key", "/keys/it's", '/keys/"k"', "/keys/%h", "/keys/a\tb"])
def test_key_path_that_rsync_e_would_split_is_refused_with_the_setting_named(path):
    with pytest.raises(SshConfigError, match="key-file"):
        facility_endpoint(key_file=Path(path))


def test_known_hosts_path_with_space_is_refused_with_the_setting_named():
    with pytest.raises(SshConfigError, match="known-hosts-file"):
        facility_endpoint(known_hosts_file=Path("/etc/my hosts"))


@pytest.mark.parametrize(
    "field,value",
    [
        ("host", "-oProxyCommand=x"),
        ("host", "a b"),
        ("user", "-l"),
        ("user", "a b"),
        ("port", 0),
        ("source_root", "data/mx"),
        ("source_root", "/data/../etc"),
    ],
)
def test_unsafe_endpoint_values_are_refused(field, value):
    with pytest.raises(SshConfigError):
        facility_endpoint(**{field: value})


def test_missing_key_file_is_named(tmp_path):
    ep = facility_endpoint(key_file=tmp_path / "nope", known_hosts_file=None)
    with pytest.raises(SshConfigError, match=str(tmp_path / "nope")):
        ep.check_files()


def test_a_shared_connection_is_used_when_given_and_never_required():
    assert not any("Control" in part for part in facility_endpoint().ssh_command())
    cmd = facility_endpoint(control_path=Path("/tmp/assyncy-ssh-x/master")).ssh_command()
    # ControlMaster=no: through the master when its socket is there, else a connection of its own.
    assert cmd[-4:] == ["-o", "ControlMaster=no", "-o", "ControlPath=/tmp/assyncy-ssh-x/master"]


def test_the_master_runs_no_command_and_stays_in_the_foreground():
    cmd = facility_endpoint().master_command(Path("/tmp/assyncy-ssh-x/master"))
    for option in ("ControlMaster=yes", "ControlPath=/tmp/assyncy-ssh-x/master", "ControlPersist=no"):
        assert cmd[cmd.index(option) - 1] == "-o"
    assert "-N" in cmd and "StrictHostKeyChecking=yes" in cmd
    assert cmd[-3:] == ["-l", "help@massive.org.au", "sftp.synchrotron.org.au"]


def test_a_control_path_ssh_would_misread_is_refused():
    with pytest.raises(SshConfigError, match="control socket"):
        facility_endpoint(control_path=Path("/tmp/with space/master"))
