"""The files of etc/ (instance settings, e-mail templates, unit files, the demo's portal data), wherever
assyncy-dagster is installed.

The repository keeps them in `etc/`, where an admin finds them. The package reaches them as
`assyncy_dagster/etc`: in a checkout that is a symlink to `../etc`, and a wheel carries a copy
(package data, pyproject.toml), so the demo and the local stand-ins read the same files from a
source checkout and from `pip install 'assyncy-dagster[demo]'`. No Dagster imports.
"""

from __future__ import annotations

from pathlib import Path

ETC = Path(__file__).parent / "etc"


def etc_path(*parts: str) -> Path:
    """A file or folder under etc/, e.g. `etc_path("scale-out", "dagster.yaml")`."""
    return ETC.joinpath(*parts)
