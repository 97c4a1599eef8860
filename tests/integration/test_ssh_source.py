"""The SFTP host resource (resources/ssh_source.py), against the test stack's real sshd and config.yml."""

from __future__ import annotations

import pytest

from assyncy_dagster.resources.ssh_source import SshSourceResource
from assyncy_dagster.transfer import RsyncError, SshConfigError


def test_missing_key_file_is_named_before_connecting(stack, tmp_path):
    stack.configure(**{"key-file": str(tmp_path / "no_such_key")})
    with pytest.raises(SshConfigError, match="no_such_key"):
        SshSourceResource().client()


def test_resource_lists_epns_through_the_real_host(stack):
    stack.lay_out("12282a", "14500a")
    assert SshSourceResource().client().list_epns() == ["12282a", "14500a"]


def test_an_edit_to_the_host_settings_applies_at_the_next_use(stack):
    stack.lay_out("12282a")
    resource = SshSourceResource()
    assert resource.client().list_epns() == ["12282a"]
    stack.configure(**{"ssh-port": 1})  # nothing listens there
    with pytest.raises(RsyncError):
        resource.client().list_epns()
