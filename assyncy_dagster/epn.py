"""EPN rules: what an experiment number looks like and where its data goes.

Every EPN that reaches a path, a command or a partition key passes through
`validate_epn` first. No Dagster imports here, so these rules test in
microseconds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

# Digits, then the beamtime letter(s). Bounded so that a hostile listing
# cannot hand us a megabyte-long "EPN".
_EPN = re.compile(r"[0-9]{1,12}[a-z]{1,4}", re.ASCII)
_BASE = re.compile(r"[0-9]{1,12}", re.ASCII)
# A project folder name: one safe path component.
_PROJECT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}", re.ASCII)


class InvalidEpnError(ValueError):
    """An EPN, base number or project name that breaks the rules."""


class UnmappedEpnError(LookupError):
    """An EPN whose base number has no project in `epn_cap_map`."""


def is_valid_epn(value: object) -> bool:
    return isinstance(value, str) and _EPN.fullmatch(value) is not None


def validate_epn(value: object) -> str:
    """Return `value` if it is a well-formed EPN (`12282a`), else raise InvalidEpnError."""
    if not is_valid_epn(value):
        raise InvalidEpnError(
            f"{value!r} is not a valid EPN: expected digits followed by lowercase letters, e.g. 12282a"
        )
    return value  # type: ignore[return-value]


def is_valid_base_number(value: object) -> bool:
    return isinstance(value, str) and _BASE.fullmatch(value) is not None


def is_valid_project(value: object) -> bool:
    return isinstance(value, str) and _PROJECT.fullmatch(value) is not None and ".." not in value


def base_number(epn: str) -> str:
    """`12282a` -> `12282`."""
    validate_epn(epn)
    return epn.rstrip("abcdefghijklmnopqrstuvwxyz")


def project_for(epn: str, epn_cap_map: Mapping[str, str]) -> str | None:
    """The project folder an EPN belongs to, or None when its base number is not mapped."""
    return epn_cap_map.get(base_number(epn))


def is_mapped_epn(value: object, epn_cap_map: Mapping[str, str]) -> bool:
    """An EPN this site repatriates: a valid name whose base number epn_cap_map maps to a project.
    The one test of it (the sensor, the stuck canary and the re-check for late data all ask it)."""
    return is_valid_epn(value) and project_for(value, epn_cap_map) is not None  # type: ignore[arg-type]


def destination_for(epn: str, epn_cap_map: Mapping[str, str], root: Path) -> Path:
    """`<root>/<project>/<epn>/data`, proven to stay under `root`."""
    project = project_for(epn, epn_cap_map)
    if project is None:
        raise UnmappedEpnError(f"EPN {epn} is not mapped: add its base number {base_number(epn)!r} to epn_cap_map")
    if not is_valid_project(project):
        raise InvalidEpnError(f"epn_cap_map maps {base_number(epn)!r} to unsafe project folder {project!r}")
    root = Path(root).resolve()
    expected = root / project / epn / "data"
    destination = expected.resolve()
    if not destination.is_relative_to(root) or destination == root:
        raise InvalidEpnError(f"destination for EPN {epn} escapes {root}: {destination}")
    if destination != expected:
        # e.g. a project folder linked to another project's: the data would land in the wrong project.
        raise InvalidEpnError(
            f"destination for EPN {epn} is {expected}, but a symlink under it leads to {destination}; "
            f"replace the link with a real folder"
        )
    return destination


def project_folder(destination: Path) -> Path:
    """The project folder of an EPN's destination (`destination_for`'s `<root>/<project>/<epn>/data`)."""
    return destination.parent.parent


def source_path_for(epn: str, source_root: str) -> str:
    """The remote folder of an EPN, with the trailing slash rsync needs to copy its contents."""
    validate_epn(epn)
    return f"{source_root.rstrip('/')}/{epn}/"
