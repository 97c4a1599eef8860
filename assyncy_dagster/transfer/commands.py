"""The rsync command lines: the one place where they are built.

Why the flags are what they are (`transfer_command`):

* `-r -t --perms --chmod=Dg+s,ug+w,o-wx,ug+X --size-only --include .info
  --exclude .*` are the flags HPC ASSyncy meant to pass (its `-stats` typo
  turned them into `-a`), plus `Fug-st` in `--chmod`: a setuid, setgid or
  sticky bit on a source file never arrives (`--perms` would copy it).
  `--size-only` because the beamline never rewrites a
  frame in place, and comparing checksums of terabytes would take days. The
  manifest check (`compare_manifests`) then catches missing and truncated
  files; a frame rewritten at the same size is invisible to both, by design.
* `--include .info --exclude .*` match *basenames at every level*: hidden files
  and folders anywhere are skipped, and anything named exactly `.info` is kept.
  `local_manifest` applies the same rule to the destination.
* `--partial-dir=.rsync-partial`: an interrupted file is moved into
  `<its folder>/.rsync-partial/` and used as the basis when the transfer
  resumes, so a half-copied frame never sits under its final name (the seed's
  `-P` implied `--partial`, which leaves exactly that). The `.*` exclude already
  matches `.rsync-partial`, so the folder is never listed, sent or counted as
  data, and rsync would protect it from `--delete` anyway. While a file is in
  flight rsync writes it to a hidden `.<name>.XXXXXX` temp file beside the
  final name; only a SIGKILL (after the SIGTERM grace) can leave that behind,
  and being hidden it is ignored by the manifests and replaced on the next run.
* `--mkpath` creates `<project>/<epn>/data/` under the destination root (rsync
  does not, otherwise); `--dry-run` creates nothing at all. The project folder
  itself must already exist unless `create-project-folders: true` (epn_data
  checks before rsync starts), so a typo in `epn_cap_map` is an error, not a
  new project.
* `--links`: a symlink arrives as the same symlink. Without it rsync skips
  every symlink with exit 0 and the data behind it is silently missing. A
  link that stays inside the EPN folder works at home exactly as at the
  facility, since what it points to comes home too. A link that leaves the
  EPN folder (absolute, or `..` past its top) would point at nothing here,
  and the facility's read-only account (rrsync) refuses `-L` and
  `--copy-unsafe-links`, so its data cannot be fetched: the EPN then fails,
  naming each such link (`unsafe_links`), and is not recorded.
* `--info=progress2 --no-h --stats`: one overall progress record (ending in
  `\\r`) instead of a line per file, plain numbers, and the totals we report.
* `-ii --out-format=%i|%l|%n%L`: one line per file and symlink the transfer
  considered, changed or not, with its size at the source (a link's ` -> target`). That is the source manifest the
  `matches_source` check compares the destination with, taken from the
  transfer itself instead of a second listing over a second ssh connection
  (which cost as much as the transfer of a small EPN).
* `--timeout`: a stalled remote (hung file system at the facility) fails with
  exit code 30 instead of hanging the run forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..epn import source_path_for, validate_epn
from .endpoint import SshEndpoint

RSYNC = "rsync"
PARTIAL_DIR = ".rsync-partial"
ITEMIZE = ("-ii", "--out-format=%i|%l|%n%L")
KEPT_HIDDEN_NAME = ".info"
# Each pair of items is one rsync filter; the order matters (first match wins).
TRANSFER_FILTERS: tuple[str, ...] = ("--include", KEPT_HIDDEN_NAME, "--exclude", ".*")
CHMOD = "--chmod=Dg+s,ug+w,o-wx,ug+X,Fug-st"
DEFAULT_IO_TIMEOUT_SECONDS = 600


def transfer_command(
    endpoint: SshEndpoint,
    epn: str,
    destination: Path,
    *,
    dry_run: bool,
    extra_args: Sequence[str] = (),
    io_timeout_seconds: int = DEFAULT_IO_TIMEOUT_SECONDS,
) -> list[str]:
    """The rsync argv that copies EPN `epn` into `destination` (see the module docstring for why each flag)."""
    validate_epn(epn)
    destination = Path(destination).absolute()  # absolute: never read as an option or a host:path
    argv = [
        RSYNC,
        "-r",
        "-t",
        "--links",
        "--stats",
        CHMOD,
        "--perms",
        "--size-only",
        *TRANSFER_FILTERS,
        f"--partial-dir={PARTIAL_DIR}",
        "--mkpath",
        "--info=progress2",
        "--no-h",
        *ITEMIZE,
        f"--timeout={int(io_timeout_seconds)}",
    ]
    if dry_run:
        argv.append("--dry-run")
    argv += list(extra_args)
    argv += [
        "-e",
        endpoint.rsync_shell(),
        endpoint.remote(source_path_for(epn, endpoint.source_root)),
        f"{destination}/",
    ]
    return argv


def list_command(
    endpoint: SshEndpoint, path: str, *, recursive: bool, io_timeout_seconds: int = DEFAULT_IO_TIMEOUT_SECONDS
) -> list[str]:
    """rsync with no destination: prints a listing of remote `path` (recursive: with the transfer's filters)."""
    argv = [RSYNC, "--list-only", "--no-h", f"--timeout={int(io_timeout_seconds)}"]
    if recursive:
        argv += ["-r", "--links", *TRANSFER_FILTERS]  # --links: list symlinks as the transfer sees them
    argv += ["-e", endpoint.rsync_shell(), endpoint.remote(path)]
    return argv
