"""epn_data: one experiment's files, brought home and verified, and its `matches_source` check.

The definitions only: the batch loop a step runs is assets/repatriation.py, the repatriation of
one EPN assets/bring_home.py, and what "home" means transfer/verification.py. Every path that
records an EPN (this asset, the stand-alone check, the sensor's batches, mxsync) runs that code.
"""

from pathlib import Path

import dagster as dg

from ..epn import destination_for, validate_epn
from ..names import RSYNC_POOL
from ..partitions import epn_partitions
from ..resources.portal import PortalResource
from ..resources.settings import AssyncyConfigResource
from ..resources.ssh_source import SshSourceResource
from ..state import add_epns
from ..transfer import RsyncError, local_tree
from ..transfer.manifests import with_checksums
from ..transfer.verification import verify_tree
from .bring_home import CHECK_NAME, bag_info, check_metadata, record_home, recorded_tree
from .repatriation import EpnDataConfig, repatriate_as_configured
from .visits import PORTAL_VISITS

# A UI backfill of many EPNs runs this many per run: one process start-up and
# code load for them all, and still several runs to share out over `max-tasks`.
BACKFILL_EPNS_PER_RUN = 50
OWNER = "team:research-data"
# 2: symlinks kept and checked, source digest recorded, dry-runs are observations.
# 3: content checksums (the sender's) in a manifest beside data/, mtimes compared, folders and
#    special files checked, links judged by where they resolve, data flushed before recording.
CODE_VERSION = "3"


@dg.asset(
    partitions_def=epn_partitions,
    group_name="repatriation",
    pool=RSYNC_POOL,
    kinds={"rsync"},
    owners=[OWNER],
    tags={"data": "raw-experiment", "source": "synchrotron"},
    # Bump when what a materialisation means changes (flags, what is verified), so
    # the UI shows which EPNs were brought home by an older version.
    code_version=CODE_VERSION,
    deps=[PORTAL_VISITS],
    # Each EPN is reported as its own partition's materialisation below, never
    # one materialisation for a whole range; with no output, the separate
    # `matches_source` step is skipped in the same run (this step reports it).
    output_required=False,
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=BACKFILL_EPNS_PER_RUN),
)
def epn_data(
    context: dg.AssetExecutionContext,
    config: EpnDataConfig,
    portal: PortalResource,
    sftp: SshSourceResource,
    assyncy_config: AssyncyConfigResource,
):
    """The experiment's files at home: `<destination-root-path>/<project>/<epn>/data/`,
    pulled from the SFTP host with rsync over SSH.

    A materialised partition means the EPN's data is at the destination. Only
    when the `matches_source` check then passes is the EPN appended to
    ignore.yml (`previouslySynched`) and never fetched again (except for data
    that appears within `resync-days` of the visit's end). A dry-run
    (`execute: false`) copies nothing and is recorded as an observation, never
    a materialisation. A backfill runs up to 50 EPNs per run, one after
    another, each recorded on its own; a failed or missing partition is
    repaired by materialising it again.
    """
    yield from repatriate_as_configured(
        context, context.partition_keys, config, portal, sftp, assyncy_config, report_visits=False
    )


@dg.asset_check(
    asset=epn_data,
    name=CHECK_NAME,
    blocking=True,
    partitions_def=epn_partitions,
    description="The one verification (transfer/verification.py): the source holds files, no special file "
    "and no symlink resolving outside the EPN; every file (hidden files excluded, .info kept) is at the "
    "destination with the same size and mtime, every symlink with the same target, every folder; content "
    "checksums (the sender's, in the manifest beside data/) counted where known. Passing after a real "
    "transfer records the EPN in ignore.yml; failing lists the first 100 problems as a table.",
)
def epn_data_matches_source(
    context: dg.AssetCheckExecutionContext,
    sftp: SshSourceResource,
    assyncy_config: AssyncyConfigResource,
) -> dg.AssetCheckResult:
    """Run on its own (the `verify_epn_data` job): lists the source afresh and compares; a
    transfer step reports this check itself."""
    epn = validate_epn(context.partition_key)
    settings = assyncy_config.settings()
    destination = destination_for(epn, settings.epn_cap_map, settings.destination_root_path)
    client = sftp.client(logger=context.log)
    try:
        listed = client.source_tree(epn)
    except RsyncError as exc:
        raise dg.Failure(description=f"EPN {epn}: cannot list the source to verify: {exc}") from None
    source = with_checksums(listed, recorded_tree(destination.parent, settings).items())
    verdict = verify_tree(epn, source, local_tree(destination))
    metadata = check_metadata(verdict)
    if not verdict.passed:
        context.log.error(f"EPN {epn}: not verified: {verdict.summary()}")
        return dg.AssetCheckResult(passed=False, description=verdict.summary(), metadata=metadata)
    record_home(context, epn, settings, destination, source, bag_info(epn, [], settings))
    if add_epns(Path(settings.ignore), [epn]):
        context.log.info(f"EPN {epn}: verified; recorded as repatriated in {settings.ignore}")
    return dg.AssetCheckResult(passed=True, description=verdict.summary(), metadata=metadata)
