"""intact_at_home: a recorded EPN's data at home still hashes to its manifest (the fixity audit).

`epn_data`'s second check, non-blocking: `matches_source` says the copy equalled
the source when it was made; `intact_at_home` says, later, that nothing has
happened to it since (bit rot, a failing disk, a file deleted or edited at
home). The `fixity_audit` job (jobs.py; weekly, or launched from the UI or the
CLI) audits every recorded EPN and reports one result per partition; the check
itself, launched for one partition from the UI, audits that EPN. fixity.py does
the reading and keeps the findings; this module only reports them.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import dagster as dg

from ..config import Settings
from ..epn import InvalidEpnError, UnmappedEpnError, destination_for, is_valid_epn, validate_epn
from ..fixity import Audit, FixityError, audit_epn, findings_path, record_findings
from ..names import FIXITY_JOB, REPATRIATION_JOB
from ..partitions import EPN_PARTITIONS_NAME, epn_partitions
from ..resources.settings import AssyncyConfigResource
from ..run_records import EPN_DATA, in_flight
from ..state import StateFileError, read_epns
from ..transfer.bag import read_manifest
from .epn_data import epn_data

INTACT_CHECK = "intact_at_home"
NO_MANIFEST = "no manifest: verified by size only"
SHOWN_PROBLEMS = 100


@dataclass(frozen=True)
class FixityVerdict:
    """One EPN's audit, phrased for Dagster: passed, description, metadata, severity."""

    passed: bool
    description: str
    metadata: dict[str, dg.MetadataValue | str | int | float]
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR
    audit: Audit | None = None  # None: nothing was read (no manifest, or no folder at home)

    def evaluation(self, epn: str) -> dg.AssetCheckEvaluation:
        """The result for `epn`'s partition, as a step that audits many EPNs reports it."""
        return dg.AssetCheckEvaluation(
            asset_key=EPN_DATA,
            check_name=INTACT_CHECK,
            passed=self.passed,
            partition=epn,
            description=self.description,
            metadata=self.metadata,
            severity=self.severity,
        )

    def result(self) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(
            passed=self.passed, description=self.description, metadata=self.metadata, severity=self.severity
        )


def _problem_table(audit: Audit) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        records=[dg.TableRecord({"path": p, "problem": what}) for p, what in audit.problems()[:SHOWN_PROBLEMS]],
        schema=dg.TableSchema(columns=[dg.TableColumn("path", "string"), dg.TableColumn("problem", "string")]),
    )


def audit_partition(epn: str, settings: Settings, storage_directory: str, log) -> FixityVerdict:
    """Audit one recorded EPN at home against its manifest, keep the findings, and phrase the verdict.

    An EPN without a manifest (brought home by the old tool or an earlier version) cannot be
    audited: a warning, not a failure. Raises FixityError when it cannot be audited at all."""
    try:
        destination = destination_for(validate_epn(epn), settings.epn_cap_map, settings.destination_root_path)
    except (InvalidEpnError, UnmappedEpnError) as exc:
        raise FixityError(str(exc)) from None
    epn_folder = destination.parent
    if not destination.is_dir():
        return FixityVerdict(
            False,
            f"EPN {epn}: recorded, but its folder {destination} is missing at home; "
            f"repair: materialise epn_data for partition {epn} (a backfill)",
            {"destination": dg.MetadataValue.path(str(destination))},
        )
    recorded = read_manifest(epn_folder)
    if recorded is None:
        return FixityVerdict(
            False,
            f"EPN {epn}: {NO_MANIFEST} (no manifest beside {destination}); "
            "materialise its epn_data partition with full_checksum: true to record its checksums",
            {"manifest": "none", "destination": dg.MetadataValue.path(str(destination))},
            severity=dg.AssetCheckSeverity.WARN,
        )
    audit = audit_epn(epn_folder, recorded, max_mib_per_second=settings.fixity_max_mib_per_second)
    record_findings(findings_path(storage_directory), epn, audit)
    metadata: dict[str, dg.MetadataValue | str | int | float] = {
        "algorithm": recorded.algorithm,
        "manifest_digest": recorded.digest,
        "files_verified_by_content": audit.verified,
        "files_verified_by_size_only": audit.unchecked,
        "corrupt": len(audit.corrupt),
        "missing": len(audit.missing),
        "changed_at_home": len(audit.changed),
        "bytes_read": audit.bytes_read,
        "duration_seconds": round(audit.seconds, 3),
        "throughput_mib_per_second": audit.mib_per_second,
        "max_mib_per_second": settings.fixity_max_mib_per_second,
        "destination": dg.MetadataValue.path(str(destination)),
    }
    description = f"EPN {epn}: {audit.summary()}"
    if not audit.ok:
        metadata["problems"] = _problem_table(audit)
        metadata["repair"] = f"materialise epn_data for partition {epn} (a backfill) to fetch these files again"
        description += f"\nRepair: materialise epn_data for partition {epn} (a backfill); the files are fetched again."
        log.error(description)
    else:
        log.info(description)
    return FixityVerdict(audit.ok, description, metadata, audit=audit)


@dg.asset_check(
    asset=epn_data,
    name=INTACT_CHECK,
    blocking=False,
    partitions_def=epn_partitions,
    description="The EPN's data at home still matches the checksum manifest written when it was brought home: "
    "every file with a recorded checksum is read again (at most fixity-max-mib-per-second). A file corrupt "
    "(same size and time, other content), missing, or changed at home fails it; the repair is a backfill of the "
    "partition. The fixity_audit job (weekly) checks every recorded EPN.",
)
def epn_data_intact_at_home(
    context: dg.AssetCheckExecutionContext, assyncy_config: AssyncyConfigResource
) -> dg.AssetCheckResult:
    """Audit one partition, when Dagster runs the check itself. It seldom does: a partitioned check
    cannot run alone in a job (see jobs.verification_job), and a materialisation of epn_data plans
    it but skips it (epn_data yields no output), so the UI shows it not run for that partition until
    the next audit. The fixity_audit job (`epns` for some EPNs only) is the way to run it."""
    try:
        verdict = audit_partition(
            context.partition_key, assyncy_config.settings(), context.instance.storage_directory(), context.log
        )
    except FixityError as exc:
        raise dg.Failure(description=str(exc)) from None
    return verdict.result()


def audit_recorded_epns(
    context: dg.OpExecutionContext, epns: Sequence[str], settings: Settings
) -> Iterator[dg.AssetCheckEvaluation | dg.Output]:
    """Audit `epns` (none: every EPN in ignore.yml), one after another, each reported as its own
    partition's `intact_at_home` result as soon as it is done. An EPN a repatriation run is
    transferring right now is skipped (its files are being replaced). Raises dg.Failure at the end
    naming every EPN found damaged, so the run shows it too."""
    instance = context.instance
    others = instance.get_run_records(
        dg.RunsFilter(job_name=FIXITY_JOB, statuses=[dg.DagsterRunStatus.STARTED]), limit=5
    )
    other = next((r.dagster_run.run_id for r in others if r.dagster_run.run_id != context.run_id), None)
    if other:  # two audits would read every EPN twice over, each at the full rate
        raise dg.Failure(description=f"fixity audit: run {other} is auditing already; not started")
    try:
        recorded = read_epns(settings.ignore)
    except StateFileError as exc:
        raise dg.Failure(description=f"fixity audit: {exc}") from None
    wanted = list(dict.fromkeys(epns)) if epns else sorted(recorded)
    partitions = instance.get_dynamic_partitions(EPN_PARTITIONS_NAME)
    transferring = in_flight(instance, REPATRIATION_JOB, partitions).epns
    known = set(partitions)
    damaged: dict[str, str] = {}
    skipped: dict[str, str] = {}
    no_manifest: list[str] = []
    intact: list[str] = []
    read = 0
    for epn in wanted:
        if not is_valid_epn(epn):
            skipped[epn] = "not a valid EPN name"
        elif epn not in recorded:
            skipped[epn] = f"not recorded in {settings.ignore}: nothing at home to audit yet"
        elif epn in transferring:
            skipped[epn] = f"run {transferring[epn]} is transferring it right now"
        if epn in skipped:
            context.log.warning(f"EPN {epn}: not audited: {skipped[epn]}")
            continue
        try:
            verdict = audit_partition(epn, settings, instance.storage_directory(), context.log)
        except FixityError as exc:
            skipped[epn] = str(exc)
            context.log.warning(f"EPN {epn}: not audited: {exc}")
            continue
        if verdict.severity is dg.AssetCheckSeverity.WARN:
            no_manifest.append(epn)
            if epn not in known:  # brought home by the old tool, never a partition here: the log says it
                context.log.warning(verdict.description)
                continue
        elif epn not in known:
            # Recorded by another instance or before its partition was removed: the result needs a
            # partition to show on, and the repair (a backfill) needs one too.
            instance.add_dynamic_partitions(EPN_PARTITIONS_NAME, [epn])
            known.add(epn)
        if verdict.audit is not None:
            read += verdict.audit.bytes_read
        if verdict.passed:
            intact.append(epn)
        elif verdict.severity is dg.AssetCheckSeverity.ERROR:
            damaged[epn] = verdict.description.splitlines()[0]
        yield verdict.evaluation(epn)
    summary: dict[str, dg.MetadataValue | int] = {
        "epns_audited": len(intact) + len(damaged),
        "intact": len(intact),
        "damaged": dg.MetadataValue.json(damaged),
        "no_manifest": dg.MetadataValue.json(no_manifest),
        "not_audited": dg.MetadataValue.json(skipped),
        "bytes_read": read,
    }
    context.log.info(
        f"fixity audit: {len(intact)} EPN(s) intact, {len(damaged)} damaged"
        + (f" ({', '.join(damaged)})" if damaged else "")
        + f", {len(no_manifest)} with no manifest (verified by size only), {len(skipped)} not audited; "
        f"{read} bytes read"
    )
    if damaged:
        raise dg.Failure(
            description=f"fixity audit: {len(damaged)} EPN(s) damaged at home: {', '.join(damaged)}; "
            f"repair: materialise epn_data for partition(s) {', '.join(damaged)} (a backfill)",
            metadata=summary,
        )
    yield dg.Output(None, metadata=summary)
