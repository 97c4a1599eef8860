"""A whole local stand-in for the synchrotron: config.yml pointing at the portal
simulator, a real sshd serving a source tree, and an SMTP sink.

The demo and the tests build their config through `write_config`, so both run
the production code path with only the endpoints changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import yaml

from assyncy_dagster.etc_files import etc_path

from .sshd import LocalSshd, make_source_tree

ETC = etc_path()
DEMO_VISITS = etc_path("demo-visits.yml")
DEMO_CAP_MAP = {"12282": "ny79", "13001": "ab12"}
DEMO_EQUIPMENT = [
    {
        "username": "demo-user",
        "password": "demo-password",
        "client_name": "demo-client",
        "client_password": "demo-client-password",
        "id": equipment_id,
    }
    for equipment_id in (23, 24)
]


def far_from_the_digest() -> str:
    """A `timezone` for config.yml in which 01:00, the daily unknown-EPN digest, is about twelve
    hours away, so that the schedule never fires while a test or a benchmark runs the daemon."""
    offset = (13 - datetime.now(UTC).hour) % 24
    offset = offset - 24 if offset > 12 else offset
    # Etc/GMT zones have inverted signs: Etc/GMT-5 is UTC+5.
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"


def mx_frames(count: int, frame_size: int) -> dict[str, bytes | int]:
    """An MX-like EPN folder: diffraction frames, a processing log, the portal's
    `.info` (kept) and hidden clutter (left behind, as the old tool did)."""
    files: dict[str, bytes | int] = {f"frames/img_{i:04d}.cbf": frame_size for i in range(1, count + 1)}
    files["processing/xds.log"] = b"XDS run finished\n"
    files[".info"] = b"beamline: MX2\n"
    files[".DS_Store"] = 64
    files["frames/.img_0001.cbf.swp"] = 32
    return files


def lay_out_epns(sshd: LocalSshd, epns: Mapping[str, Mapping[str, bytes | int]], beamline: str = "mx") -> Path:
    """Create each EPN's folder under the beamline folder the sshd serves."""
    beamline_dir = sshd.beamline_dir(beamline)
    for epn, files in epns.items():
        make_source_tree(beamline_dir, epn, files)
    return beamline_dir


def write_config(
    path: Path,
    *,
    portal_url: str,
    sshd: LocalSshd,
    smtp_port: int,
    destination_root: Path,
    epn_cap_map: Mapping[str, str] = DEMO_CAP_MAP,
    execute: bool = True,
    max_tasks: int = 2,
    template_folder: Path = ETC,
    log_dir: Path | None = None,
    extra: Mapping[str, object] | None = None,
    project_folders: bool = True,
) -> Path:
    """Write a config.yml for the local stand-ins; returns its path.

    With `project_folders`, each project of `epn_cap_map` gets its folder under
    `destination_root`, as on a real site (epn_data never creates one unless
    `create-project-folders: true`)."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    destination_root.mkdir(parents=True, exist_ok=True)
    if project_folders:
        for project in set(epn_cap_map.values()):
            (destination_root / project).mkdir(exist_ok=True)
    log_dir = log_dir or folder / "log"
    data = {
        "comment": "generated for a local stand-in of the synchrotron",
        "epn_cap_map": dict(epn_cap_map),
        "ignore": str(folder / "ignore.yml"),
        "equipment": DEMO_EQUIPMENT,
        "base-url": portal_url,
        "portal-allow-insecure": True,  # the local stand-in speaks plain HTTP
        "beamline": "mx",
        "epnalert-email-to": "helpdesk@example.edu",
        "epnalert-email-from": "assyncy@example.edu",
        "epnalert-email-smtp": f"127.0.0.1:{smtp_port}",
        "epnalert-template-folder": str(template_folder),
        "epnalert-template-text": "epnalert-text.j2",
        "epnalert-template-html": "epnalert-html.j2",
        "visit-day-range": 60,
        "key-file": str(sshd.key_file),
        "known-hosts-file": str(sshd.known_hosts_file),
        "host": sshd.host,
        "ssh-port": sshd.port,
        "sftp-username": sshd.user,
        "destination-root-path": str(destination_root),
        "sync-frequency-hours": 24,
        "max-tasks": max_tasks,
        "execute": execute,
        "log-level": "logging.INFO",
        "log-files": {
            "sync": str(log_dir / "sync.log"),
            "epnalert": str(log_dir / "epnalert.log"),
            "email": str(log_dir / "email.log"),
        },
        "retry-backoff-minutes": 30,
    }
    data.update(extra or {})
    path.write_text("---\n" + yaml.safe_dump(data, sort_keys=False))
    return path
