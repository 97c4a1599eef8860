"""The rsync command lines: the one place where they are built.

Why the flags are what they are (`transfer_command`):

* `-r -t --perms --chmod=Dg+s,ug+w,o-wx,ug+X --include .info --exclude .*` are
  the flags HPC ASSyncy meant to pass (its `-stats` typo turned them into `-a`),
  plus `Fug-st` in `--chmod`: a setuid, setgid or sticky bit on a source file
  never arrives (`--perms` would copy it).
* No `--size-only` (the old tool's): rsync's default quick check compares size
  *and* mtime, and `-t` keeps the facility's mtimes, so a frame rewritten at
  the same size is fetched again (only that file), while an unchanged EPN
  costs no read at either end.
* `--checksum-choice=xxh128` (or `md5`, `checksum-algorithm`): the whole-file
  checksum that rsync's sender computes of every file *while sending it*, and
  that the receiver checks after writing, is the one recorded in the EPN's
  manifest (`%C` below): content verified end to end at no extra read. Named
  rather than negotiated, so the manifest always says which it is.
  `--checksum` (only for `full_checksum` runs, see epn_data) makes both ends
  read every file, so files brought home earlier get a checksum too.
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
  new project. rsyncs making one folder at once race, so what several may make
  is made before they start: the project folder by epn_data, `data/` for
  streams by the client (client._make_folders).
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
* `-ii --out-format=%i|%l|%M|%C|%n%L`: one line per entry the transfer considered
  (files, symlinks, folders), changed or not, with its size (a link's: the length
  of its target, which splits `name -> target` exactly), mtime, the sender's
  checksum of a file it sent, and a link's ` -> target`. That is the source tree
  the one verification (verification.py) compares the destination with, taken
  from the transfer itself instead of a second listing over a second ssh
  connection (which cost as much as the transfer of a small EPN).
* `--timeout`: a stalled remote (hung file system at the facility) fails with
  exit code 30 instead of hanging the run forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

from ..epn import source_path_for, validate_epn
from .endpoint import SshEndpoint
from .manifests import KEPT_HIDDEN_NAME

RSYNC = "rsync"
PARTIAL_DIR = ".rsync-partial"
ITEMIZE = ("-ii", "--out-format=%i|%l|%M|%C|%n%L")
# The whole-file checksums rsync can give per file that the manifest records (config.yml's
# `checksum-algorithm` is typed with this, so that the schema and the command line agree).
ChecksumAlgorithm = Literal["xxh128", "md5"]
CHECKSUM_ALGORITHMS: tuple[str, ...] = get_args(ChecksumAlgorithm)
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
    checksum_algorithm: str = "xxh128",
    full_checksum: bool = False,
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
        f"--checksum-choice={checksum_algorithm}",
        *TRANSFER_FILTERS,
        f"--partial-dir={PARTIAL_DIR}",
        "--mkpath",
        "--info=progress2",
        "--no-h",
        *ITEMIZE,
        f"--timeout={int(io_timeout_seconds)}",
    ]
    if checksum_algorithm not in CHECKSUM_ALGORITHMS:
        raise ValueError(f"checksum algorithm {checksum_algorithm!r}: expected one of {', '.join(CHECKSUM_ALGORITHMS)}")
    if full_checksum:
        argv.append("--checksum")
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
