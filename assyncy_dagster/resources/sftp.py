"""The synchrotron's SFTP host, reached with rsync over ssh, as a resource."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from ..rsync import SftpClient, SshConfigError, SshEndpoint


class SftpResource(dg.ConfigurableResource):
    """The SFTP host that serves each EPN's data (`host`, `ssh-port`, `key-file` in config.yml).

    Data moves with rsync over ssh, key-only and non-interactive, with the host
    key checked against `known_hosts_file` when one is set. Only the *path* of
    the private key is configured here: the key itself is read by ssh alone,
    never by this code, the UI or the run logs. A missing key file fails at use
    with an error naming it.
    """

    host: str = Field(description="SFTP host name, e.g. sftp.synchrotron.org.au.")
    port: int = Field(default=22, description="SSH port of the SFTP host.")
    user: str = Field(description="SSH user on the SFTP host (sftp-username, else the portal user).")
    key_file: str = Field(description="Path of the SSH private key (read by ssh only).")
    known_hosts_file: str | None = Field(
        default=None,
        description="known_hosts file pinning the SFTP host's key; unset uses ssh's default known_hosts.",
    )
    source_root: str = Field(description="Remote folder holding one folder per EPN, e.g. /data/mx.")
    bwlimit_kib: int | None = Field(
        default=None, description="Bandwidth limit per transfer in KiB/s (rsync --bwlimit); unset is unlimited."
    )

    @classmethod
    def from_settings(cls, settings: Any) -> SftpResource:
        """The resource config.yml describes."""
        endpoint = SshEndpoint.from_settings(settings)
        return cls(
            host=endpoint.host,
            port=endpoint.port,
            user=endpoint.user,
            key_file=str(endpoint.key_file),
            known_hosts_file=str(endpoint.known_hosts_file) if endpoint.known_hosts_file else None,
            source_root=endpoint.source_root,
            bwlimit_kib=settings.rsync_bwlimit_kib,
        )

    def endpoint(self) -> SshEndpoint:
        """The validated endpoint; raises SshConfigError naming a missing key or known-hosts file."""
        endpoint = SshEndpoint(
            host=self.host,
            port=self.port,
            user=self.user,
            key_file=Path(self.key_file),
            known_hosts_file=Path(self.known_hosts_file) if self.known_hosts_file else None,
            source_root=self.source_root,
        )
        endpoint.check_files()
        return endpoint

    def client(self, logger: logging.Logger | Any | None = None) -> SftpClient:
        """A client that lists and copies EPN folders, logging to `logger` (e.g. `context.log`)."""
        return SftpClient(self.endpoint(), logger=logger, bwlimit_kib=self.bwlimit_kib)


__all__ = ["SftpResource", "SshConfigError"]
