"""What the portal client raises: each names the portal, the equipment and the cause, and a failure
is never turned into "no visits", because an empty answer would look like a quiet week."""

from __future__ import annotations


class PortalError(Exception):
    """The portal could not be asked, or did not answer usefully."""


class PortalAuthError(PortalError):
    """The portal refused the credentials or the access token of an equipment."""


class PortalDataError(PortalError):
    """The portal answered, but not with what its API promises."""
