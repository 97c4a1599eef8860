"""The synchrotron's SFTP host, reached with rsync over ssh, as a resource."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import dagster as dg

from ..transfer import RsyncClient, SshConfigError, SshEndpoint
from ..transfer.connection import shared_connection
from .settings import current_settings


class SshSourceResource(dg.ConfigurableResource):
    """The SFTP host that serves each EPN's data (`host`, `ssh-port`, `key-file` in config.yml).

    Data moves with rsync over ssh, key-only and non-interactive, with the host
    key checked against `known-hosts-file` when one is set. Host, port, user,
    key, known_hosts and source folder are read from config.yml at every use
    (an edit applies at the next tick or run) and cannot be set at launch time.
    Only the *path* of the private key is configured: the key itself is read
    by ssh alone, never by this code, the UI or the run logs. A missing key
    file fails at use with an error naming it.

    It is bound under the resource key `sftp` because config.yml's keys
    (`sftp-username`) and the facility call this host "the SFTP host".
    """

    def endpoint(self) -> SshEndpoint:
        """The validated endpoint; raises SshConfigError naming a missing key or known-hosts file."""
        endpoint = SshEndpoint.from_settings(current_settings())
        endpoint.check_files()
        return endpoint

    def client(self, logger: logging.Logger | Any | None = None) -> RsyncClient:
        """A client that lists and copies EPN folders, logging to `logger` (e.g. `context.log`)."""
        settings = current_settings()
        endpoint = SshEndpoint.from_settings(settings)
        endpoint.check_files()
        return RsyncClient(
            endpoint,
            logger=logger,
            bwlimit_kib=settings.rsync_bwlimit_kib,
            checksum_algorithm=settings.checksum_algorithm,
        )

    @contextlib.contextmanager
    def shared_client(self, logger: logging.Logger | Any | None = None) -> Iterator[RsyncClient]:
        """`client()`, its transfers sharing one ssh connection while the context lasts (a batch:
        one handshake instead of one per EPN; transfer/connection.py). Not with `transfer-streams`
        above 1: streams exist to get a connection (and a per-connection cap) each."""
        client = self.client(logger)
        if current_settings().transfer_streams > 1:
            yield client
            return
        with shared_connection(client.endpoint, logger) as endpoint:
            yield RsyncClient(
                endpoint,
                logger=logger,
                bwlimit_kib=client.bwlimit_kib,
                checksum_algorithm=client.checksum_algorithm,
            )


__all__ = ["SshConfigError", "SshSourceResource"]
