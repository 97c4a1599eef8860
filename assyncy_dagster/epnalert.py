"""Tell the helpdesk about EPNs nobody has claimed: shared by the alert job,
the daily digest and the `epnalert` command. No Dagster imports."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from .alerts.stuck_section import StuckEntry
from .alerts.templates import TemplateError
from .alerts.unknown_epn import AlertEntry, render_unknown_epn_alert
from .config import Settings
from .domain import visit_window, visits_by_epn
from .epn import project_for, validate_epn
from .logs import SecretMaskingFilter
from .mail import Mailer, MailError, build_message
from .portal.client import PortalClient
from .portal.errors import PortalError
from .state import ALERTED_KEY, add_epns
from .transfer import RsyncClient, RsyncError

log = logging.getLogger("assyncy.epnalert")

# What can go wrong outside our control while alerting: each says what to fix.
ALERT_ERRORS = (PortalError, RsyncError, MailError, TemplateError)


def unmapped_epns_on_host(settings: Settings, sftp: RsyncClient) -> list[str]:
    """Every EPN folder on the SFTP host whose base number is not in epn_cap_map."""
    return sorted(e for e in sftp.list_epns() if project_for(e, settings.epn_cap_map) is None)


def send_unknown_epn_alert(
    settings: Settings,
    portal: PortalClient,
    mailer: Mailer,
    epns: Sequence[str],
    *,
    digest: bool = False,
    stuck: Sequence[StuckEntry] = (),
    notes: Sequence[str] = (),
    logger: logging.Logger | None = None,
) -> list[str]:
    """E-mail one message about `epns` with their visit details; record them as
    alerted (unless this is the digest) only after the server accepted it.

    The digest also lists `stuck` EPNs (see canary.py) and `notes` (what could
    not be asked), and is sent when either list holds something. With stuck EPNs
    to report, a portal that cannot be asked leaves the unmapped EPNs without
    visit details, said in a note, rather than stopping the e-mail."""
    logger = logger or log
    epns = sorted({validate_epn(e) for e in epns})
    if not epns and not stuck:
        logger.info("no unmapped EPNs: nothing to send")
        return []
    notes = list(notes)
    by_epn: dict = {}
    if epns:
        since, until = visit_window(datetime.now(UTC), settings.visit_day_range)
        try:
            by_epn = visits_by_epn(portal.visits(since, until))
        except PortalError as exc:
            if not stuck:
                raise
            masked = SecretMaskingFilter(settings.secrets()).mask(str(exc))
            notes.append(f"The portal could not be asked for the unmapped EPNs' visits: {masked}")
    entries = [AlertEntry(epn=e, visits=tuple(by_epn.get(e, ()))) for e in epns]
    rendered = render_unknown_epn_alert(
        settings.epnalert_template_folder,
        settings.epnalert_template_text,
        settings.epnalert_template_html,
        entries,
        digest=digest,
        stuck=stuck,
        notes=notes,
        stuck_after_hours=settings.stuck_after_hours,
        timezone=settings.schedule_timezone,
    )
    mailer.send(build_message(rendered, settings.epnalert_email_from, settings.epnalert_email_to))
    stuck_text = f" and {len(stuck)} stuck ({', '.join(e.name for e in stuck)})" if stuck else ""
    logger.info(
        f"sent '{rendered.subject}' about {len(epns)} EPN(s){stuck_text} to {settings.epnalert_email_to}: "
        f"{', '.join(epns)}"
    )
    if not digest:
        add_epns(settings.alerted_path, epns, key=ALERTED_KEY)
    return epns
