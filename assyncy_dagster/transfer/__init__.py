"""The SSH + rsync transfer layer: the one place where rsync commands are built and run.

Pure Python (no Dagster imports) so that command building and output parsing
test in microseconds, and so that the CLI, the assets and the benchmarks run
exactly the same code.

- `errors`: the exceptions, and what rsync's exit codes mean to an admin.
- `endpoint`: the SSH side: where the SFTP host is and the `ssh` command that reaches it.
- `commands`: the rsync command lines, and why each flag is there.
- `parsing`: reading rsync's output (listings, `--stats`, progress, itemized lines).
- `process`: running rsync in its own process group, and stopping every run at shutdown.
- `manifests`: what an EPN folder holds (a tree of entries), and how two trees differ.
- `homewalk`: the walk of home begun before a transfer, kept true by the kernel's notices.
- `verification`: the one verification every path that records an EPN asks.
- `bag`: the EPN's checksum manifest at home (xxhsum- and BagIt-readable), and flushing it to disk.
- `client`: `RsyncClient`, what the assets, the sensor and the CLI use.
"""

from .client import RsyncClient
from .commands import PARTIAL_DIR, list_command, transfer_command
from .endpoint import SshEndpoint
from .errors import RSYNC_EXIT_MEANINGS, HostKeyError, RsyncError, SshConfigError, TransferTerminated, exit_meaning
from .manifests import Entry, Kind, Tree, TreeDiff, compare_trees, is_transferred_name, local_tree
from .parsing import ListingEntry, ProgressUpdate, TransferStats, parse_listing, parse_progress, parse_stats
from .process import RsyncResult, live_transfer_pids, run_rsync, terminate_all_transfers

__all__ = [
    "PARTIAL_DIR",
    "RSYNC_EXIT_MEANINGS",
    "Entry",
    "HostKeyError",
    "Kind",
    "ListingEntry",
    "ProgressUpdate",
    "RsyncClient",
    "RsyncError",
    "RsyncResult",
    "SshConfigError",
    "SshEndpoint",
    "TransferStats",
    "TransferTerminated",
    "Tree",
    "TreeDiff",
    "compare_trees",
    "exit_meaning",
    "is_transferred_name",
    "list_command",
    "live_transfer_pids",
    "local_tree",
    "parse_listing",
    "parse_progress",
    "parse_stats",
    "run_rsync",
    "terminate_all_transfers",
    "transfer_command",
]
