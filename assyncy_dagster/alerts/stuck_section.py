"""The daily digest's stuck section: the stuck-EPN canary's entries (see canary.py) in the e-mail.

EPNs due for longer than ``stuck-after-hours`` without coming home, and a portal or
SFTP-host refresh failing for as long, each with its reason. The digest's templates may use:

* ``stuck``: one dict per entry, oldest first, with ``name`` (the EPN, or
  ``portal`` / ``SFTP host``), ``since`` (an aware datetime in the digest's
  time zone), ``since_text``, ``hours`` (whole hours since) and ``reason``;
  ``stuck_text`` is the same, pre-formatted, one line each;
  ``stuck_after_hours`` the setting;
* ``digest_notes``: what the digest could not ask (the host, the portal).

A template that names none of ``stuck``, ``stuck_text`` (or ``digest_notes``)
gets the section appended (``stuck-section-*.j2``, before ``</body>`` in the
HTML part), so an admin's own templates from HPC ASSyncy still report stuck EPNs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from ..escaping import one_line
from .templates import names_used, render_fixed

STUCK_SECTION_TEXT = "stuck-section-text.j2"
STUCK_SECTION_HTML = "stuck-section-html.j2"


@dataclass(frozen=True)
class StuckEntry:
    """An EPN (or `portal` / `SFTP host`) stuck since `since` (aware), and why, for the digest."""

    name: str
    since: datetime
    reason: str


def stuck_variables(
    entries: Sequence[StuckEntry],
    notes: Sequence[str],
    *,
    now: datetime,
    stuck_after_hours: float,
    zone: str | None,
) -> dict[str, Any]:
    """The section's template variables (see the module docstring), shown in `zone` (None: UTC)."""
    where = ZoneInfo(zone) if zone else UTC
    stuck = []
    for entry in entries:
        since = entry.since.astimezone(where)
        stuck.append(
            {
                "name": one_line(entry.name),
                "since": since,
                "since_text": since.strftime("%Y-%m-%d %H:%M %Z"),
                "hours": max(0, int((now - entry.since).total_seconds() // 3600)),
                "reason": one_line(entry.reason),
            }
        )
    return {
        "stuck": stuck,
        "stuck_text": "\n".join(
            f"- {s['name']}, since {s['since_text']} ({s['hours']} h): {s['reason']}" for s in stuck
        ),
        "stuck_after_hours": f"{stuck_after_hours:g}",
        "digest_notes": [one_line(n) for n in notes],
    }


def with_stuck_section(body: str, folder: Path, name: str, variables: dict[str, Any], *, html: bool) -> str:
    """`body` with the built-in stuck section appended, when its template shows neither the
    stuck entries nor the notes (an admin's template from before the canary)."""
    if not (variables["stuck"] or variables["digest_notes"]):
        return body
    used = names_used(folder, name)
    shown = dict(variables)
    if used & {"stuck", "stuck_text"}:
        shown["stuck"] = []
    if "digest_notes" in used:
        shown["digest_notes"] = []
    if not (shown["stuck"] or shown["digest_notes"]):
        return body
    section = render_fixed(STUCK_SECTION_HTML if html else STUCK_SECTION_TEXT, folder, shown, html=html)
    end = body.lower().rfind("</body>") if html else -1
    return body[:end] + section + body[end:] if end >= 0 else body + section
