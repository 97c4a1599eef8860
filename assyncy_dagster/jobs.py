"""The jobs the sensors and the schedules launch, the two daily schedules and the weekly fixity audit."""

import dagster as dg
from pydantic import Field

from .assets.epn_data import epn_data_matches_source
from .assets.fixity import audit_recorded_epns
from .assets.repatriation import EpnDataConfig, repatriate_as_configured
from .assets.report import repatriation_report
from .assets.visits import portal_visits
from .canary import send_daily_digest
from .epnalert import ALERT_ERRORS, send_unknown_epn_alert
from .names import (
    ALERT_JOB,
    ALERT_OP,
    FIXITY_JOB,
    KIND_TAG,
    REPATRIATION_JOB,
    REPATRIATION_OP,
    REPORT_JOB,
    RSYNC_POOL,
    VERIFY_JOB,
)
from .partitions import epn_partitions
from .resources.portal import PortalResource
from .resources.settings import AssyncyConfigResource
from .resources.smtp import SmtpResource
from .resources.ssh_source import SshSourceResource


class RepatriationConfig(EpnDataConfig):
    """The EPNs of one batch; each is checked again (name, mapping, visit) before it reaches rsync."""

    epns: list[str] = Field(description="EPNs to bring home, one after another, each recorded on its own.")


@dg.op(
    name=REPATRIATION_OP,
    pool=RSYNC_POOL,
    description="Bring a batch of EPNs home: each one's portal_visits and epn_data materialisation and its "
    "matches_source result are recorded per partition, as if materialised one by one. Then the EPNs of batch "
    "runs still waiting for a slot, while there are any (each tagged skipped on the run it came from).",
)
def repatriate_epns_op(
    context: dg.OpExecutionContext,
    config: RepatriationConfig,
    portal: PortalResource,
    sftp: SshSourceResource,
    assyncy_config: AssyncyConfigResource,
):
    yield from repatriate_as_configured(
        context, config.epns, config, portal, sftp, assyncy_config, report_visits=True, take_queued=True
    )
    yield dg.Output(None)


@dg.job(
    name=REPATRIATION_JOB,
    tags={KIND_TAG: "repatriation"},
    description="Bring a batch of EPNs home (what epn_sensor and mxsync launch): one run, one rsync at a time, "
    "each EPN recorded as its own portal_visits/epn_data partition.",
)
def repatriation_job():
    repatriate_epns_op()


verification_job = dg.define_asset_job(
    VERIFY_JOB,
    # portal_visits rides along because Dagster cannot yet run a partitioned
    # check on its own in a job; refreshing the visit record is harmless. Only
    # matches_source: the fixity audit (intact_at_home) has its own job.
    selection=dg.AssetSelection.assets(portal_visits) | dg.AssetSelection.checks(epn_data_matches_source),
    partitions_def=epn_partitions,
    tags={KIND_TAG: "verification"},
    description="Re-check that an EPN's data at the destination still matches the SFTP host.",
)


class UnknownEpnAlertConfig(dg.Config):
    epns: list[str] = Field(default_factory=list, description="EPNs to tell the helpdesk about.")
    digest: bool = Field(
        default=False,
        description="Ignore `epns`: list every EPN on the SFTP host that is still unmapped (the daily digest).",
    )


@dg.op(name=ALERT_OP, description="E-mail the helpdesk about EPNs whose base number is not in epn_cap_map.")
def send_unknown_epn_alert_op(
    context: dg.OpExecutionContext,
    config: UnknownEpnAlertConfig,
    portal: PortalResource,
    smtp: SmtpResource,
    sftp: SshSourceResource,
    assyncy_config: AssyncyConfigResource,
) -> list[str]:
    settings = assyncy_config.settings()
    try:
        if config.digest:  # every unmapped EPN on the host, and the stuck ones (canary.py)
            return send_daily_digest(
                context.instance,
                settings,
                portal.client(logger=context.log),
                smtp.mailer(),
                sftp.client(logger=context.log),
                logger=context.log,
            )
        return send_unknown_epn_alert(
            settings, portal.client(logger=context.log), smtp.mailer(), config.epns, logger=context.log
        )
    except ALERT_ERRORS as exc:
        # The EPNs stay un-alerted, so a later sensor tick asks again.
        raise dg.Failure(description=f"unknown-EPN alert not sent: {exc}") from None


@dg.job(name=ALERT_JOB, tags={KIND_TAG: "alert"}, description="Unknown ownership of EPNs: the helpdesk e-mail.")
def unknown_epn_alert_job():
    send_unknown_epn_alert_op()


def build_digest_schedule(timezone: str) -> dg.ScheduleDefinition:
    """Daily at 01:00 in `timezone`, like the old tool's cron line."""
    return dg.ScheduleDefinition(
        name="unknown_epn_digest",
        job=unknown_epn_alert_job,
        cron_schedule="0 1 * * *",
        execution_timezone=timezone,
        run_config=dg.RunConfig(ops={ALERT_OP: UnknownEpnAlertConfig(digest=True)}),
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Daily digest of every EPN on the SFTP host that is still unmapped, and of every EPN stuck "
        "for more than stuck-after-hours, with its reason.",
    )


repatriation_report_job = dg.define_asset_job(
    REPORT_JOB,
    selection=dg.AssetSelection.assets(repatriation_report),
    tags={KIND_TAG: "report"},
    description="Rebuild the repatriation report (what is home, what is not and why; the plot and the files).",
)


def build_report_schedule(timezone: str) -> dg.ScheduleDefinition:
    """Daily at 00:30 in `timezone`: the report follows the clock (visits ending, EPNs becoming stuck)
    even on a day without runs, and is fresh before the 01:00 digest."""
    return dg.ScheduleDefinition(
        name="repatriation_report_daily",
        job=repatriation_report_job,
        cron_schedule="30 0 * * *",
        execution_timezone=timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Rebuild the repatriation report once a day, whatever ran.",
    )


class FixityAuditConfig(dg.Config):
    epns: list[str] = Field(
        default_factory=list, description="EPNs to audit; empty (the default): every EPN recorded in ignore.yml."
    )


@dg.op(
    name="audit_fixity",
    description="Re-hash recorded EPNs at home against their checksum manifests (at most "
    "fixity-max-mib-per-second); each EPN's intact_at_home result is reported on its own partition.",
)
def audit_fixity_op(context: dg.OpExecutionContext, config: FixityAuditConfig, assyncy_config: AssyncyConfigResource):
    yield from audit_recorded_epns(context, config.epns, assyncy_config.settings())


# Run monitoring ends an audit that runs longer than this, under a week, so that a weekly audit never
# overlaps the next (at 200 MiB/s, 6 days read 99 TiB); instead of the instance's two days for a hung run.
FIXITY_MAX_RUNTIME_SECONDS = 6 * 24 * 3600


@dg.job(
    name=FIXITY_JOB,
    tags={KIND_TAG: "fixity", "dagster/max_runtime": str(FIXITY_MAX_RUNTIME_SECONDS)},
    description="Fixity audit: is every recorded EPN's data at home still what was brought home? One intact_at_home "
    "result per EPN; a damaged EPN fails the run too, and a backfill of its epn_data partition repairs it.",
)
def fixity_audit_job():
    audit_fixity_op()


# Weekly, at night, at a time no daily job uses: an audit reads every recorded EPN again.
FIXITY_CRON = "0 3 * * 0"


def build_fixity_schedule(timezone: str) -> dg.ScheduleDefinition:
    """Sundays at 03:00 in `timezone`: every recorded EPN re-hashed against its manifest."""
    return dg.ScheduleDefinition(
        name="fixity_audit_weekly",
        job=fixity_audit_job,
        cron_schedule=FIXITY_CRON,
        execution_timezone=timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Weekly fixity audit (Sundays 03:00): every recorded EPN's files re-hashed against the manifest "
        "written when it came home, at most fixity-max-mib-per-second.",
    )
