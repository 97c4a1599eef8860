"""The unknown-EPN alert and the daily digest ("Unknown ownership of EPNs").

It keeps HPC ASSyncy's contract, so that an admin's own
templates keep working:

* subject ``Unknown ownership of EPNs`` (also for a digest);
* a multipart/alternative message, a text part and an HTML part, rendered from
  the two Jinja templates named by ``epnalert-template-text`` and
  ``epnalert-template-html`` in ``epnalert-template-folder``;
* the template variables ``epn_details`` and ``unknown_epns``, pre-formatted
  strings in HPC ASSyncy's layout.

``epn_details`` holds one block per visit of an EPN the portal knows, sorted
by EPN::

    Epn 12282a on 2026-03-01T08:00:00+11:00 is not known.
    Principal scientist: Jane Doe jane.doe@example.edu
    It includes scientists:
    First name    Last name    Email
    ------------  -----------  --------------------
    Jane          Doe          jane.doe@example.edu
    ** Please add its base number "12282" to epn_cap_map in config.yml. **

(the start is in ISO 8601 with its offset, as the portal gives it; the table
is the "simple" layout of the ``tabulate`` package that HPC ASSyncy used:
columns two spaces apart, each at least two wider than its header). A visit with no
principal scientist or no data scientists says ``(none listed)`` where HPC
ASSyncy crashed or printed an empty table.

``unknown_epns`` lists the EPNs the portal has no visit for, sorted, eight to
a row, between two dashed rules (``tabulate``'s layout without headers); it is
empty when there are none.

Templates may also use structured variables:

* ``epns``: one dict per EPN, sorted by EPN, with ``epn``, ``base_number``,
  ``known`` (True when the portal has a visit) and ``visits``; each visit has
  ``id``, ``start`` and ``end`` (datetimes), ``start_iso``, ``end_iso``,
  ``equipment_id``, ``principal_scientist`` (a person or None) and
  ``data_scientists`` (a list of persons); a person has ``first_names``,
  ``last_name``, ``email`` and ``full_name``;
* ``unknown_epn_list`` (sorted EPNs without visit) and ``unknown_epn_rows``
  (the same, in rows of eight);
* ``digest`` (True for a reminder listing every EPN still without an owner,
  False for an alert about new ones) and ``generated_at`` (an aware datetime).

The daily digest also carries the stuck-EPN canary's section and its variables
(``stuck``, ``stuck_text``, ``stuck_after_hours``, ``digest_notes``; see stuck_section.py).
With stuck entries the subject becomes ``Unknown ownership of EPNs; stuck: 12282a, ...``;
a digest goes out when either list holds something. Rendering (autoescaped HTML, strict
variables, errors naming the file and line) is templates.py's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..epn import base_number, validate_epn
from ..mail import RenderedEmail
from .stuck_section import StuckEntry, stuck_variables, with_stuck_section
from .tables import format_table, rows_of
from .templates import render

SUBJECT = "Unknown ownership of EPNs"
SCIENTIST_HEADERS = ("First name", "Last name", "Email")


@dataclass(frozen=True)
class AlertEntry:
    """An EPN without owner and the portal's visits for it (empty when the portal has none).

    A visit is any object with `id`, `epn`, `start_time`, `end_time`,
    `principal_scientist`, `data_scientists` and `equipment_id` (see
    `assyncy_dagster.domain.Visit`). A malformed EPN raises InvalidEpnError.
    """

    epn: str
    visits: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        validate_epn(self.epn)
        object.__setattr__(self, "visits", tuple(self.visits))


# -- the seed's pre-formatted strings ---------------------------------------


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _person(person: Any) -> dict[str, str] | None:
    if person is None:
        return None
    first, last = _text(getattr(person, "first_names", "")), _text(getattr(person, "last_name", ""))
    full = getattr(person, "full_name", None) or " ".join(p for p in (first, last) if p)
    return {
        "first_names": first,
        "last_name": last,
        "email": _text(getattr(person, "email", "")),
        "full_name": _text(full),
    }


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else _text(value)


def _visit(visit: Any) -> dict[str, Any]:
    return {
        "id": getattr(visit, "id", None),
        "epn": _text(getattr(visit, "epn", "")),
        "start": getattr(visit, "start_time", None),
        "end": getattr(visit, "end_time", None),
        "start_iso": _iso(getattr(visit, "start_time", None)),
        "end_iso": _iso(getattr(visit, "end_time", None)),
        "equipment_id": getattr(visit, "equipment_id", None),
        "principal_scientist": _person(getattr(visit, "principal_scientist", None)),
        "data_scientists": [p for p in map(_person, getattr(visit, "data_scientists", ()) or ()) if p],
    }


def _visit_details(epn: str, visit: dict[str, Any]) -> str:
    principal = visit["principal_scientist"]
    if principal:
        names = (principal["first_names"], principal["last_name"], principal["email"])
        principal_text = " ".join(p for p in names if p)
    else:
        principal_text = "(none listed)"
    scientists = visit["data_scientists"]
    table = (
        format_table([[p["first_names"], p["last_name"], p["email"]] for p in scientists], SCIENTIST_HEADERS)
        if scientists
        else "(none listed)"
    )
    return (
        f"Epn {epn} on {visit['start_iso']} is not known.\n"
        f"Principal scientist: {principal_text}\n"
        f"It includes scientists:\n"
        f"{table}\n"
        f'** Please add its base number "{base_number(epn)}" to epn_cap_map in config.yml. **\n\n'
    )


def template_variables(
    entries: Sequence[AlertEntry],
    *,
    digest: bool = False,
    generated_at: datetime | None = None,
    stuck: Sequence[StuckEntry] = (),
    notes: Sequence[str] = (),
    stuck_after_hours: float = 24,
    zone: str | None = None,
) -> dict[str, Any]:
    """Everything the unknown-EPN templates may use (see the module docstring)."""
    ordered = sorted(entries, key=lambda e: e.epn)
    epns: list[dict[str, Any]] = []
    details: list[str] = []
    for entry in ordered:
        visits = sorted(
            (_visit(v) for v in entry.visits),
            key=lambda v: v["start_iso"],
        )
        epns.append({"epn": entry.epn, "base_number": base_number(entry.epn), "known": bool(visits), "visits": visits})
        details.extend(_visit_details(entry.epn, v) for v in visits)
    unknown = [e["epn"] for e in epns if not e["known"]]
    generated_at = generated_at or datetime.now(UTC).astimezone()
    return {
        **stuck_variables(stuck, notes, now=generated_at, stuck_after_hours=stuck_after_hours, zone=zone),
        "epn_details": "".join(details),
        "unknown_epns": format_table(rows_of(unknown)),
        "epns": epns,
        "unknown_epn_list": unknown,
        "unknown_epn_rows": rows_of(unknown),
        "digest": digest,
        "generated_at": generated_at,
    }


# -- rendering ----------------------------------------------------------------


def render_unknown_epn_alert(
    template_folder: Path,
    text_template: str,
    html_template: str,
    entries: Sequence[AlertEntry],
    *,
    digest: bool = False,
    generated_at: datetime | None = None,
    stuck: Sequence[StuckEntry] = (),
    notes: Sequence[str] = (),
    stuck_after_hours: float = 24,
    timezone: str | None = None,
) -> RenderedEmail:
    """Render the "Unknown ownership of EPNs" e-mail for `entries` from the admin's templates,
    with the digest's `stuck` entries and `notes` (shown in `timezone`).

    Raises TemplateError naming the file (and line) when a template is
    missing, broken, or uses a variable that does not exist.
    """
    folder = Path(template_folder)
    variables = template_variables(
        entries,
        digest=digest,
        generated_at=generated_at,
        stuck=stuck,
        notes=notes,
        stuck_after_hours=stuck_after_hours,
        zone=timezone,
    )
    text = render(folder, text_template, variables, html=False, setting="epnalert-template-text")
    html = render(folder, html_template, variables, html=True, setting="epnalert-template-html")
    text = with_stuck_section(text, folder, text_template, variables, html=False)
    html = with_stuck_section(html, folder, html_template, variables, html=True)
    subject = SUBJECT
    if stuck:
        names = [s["name"] for s in variables["stuck"]]
        subject += "; stuck: " + ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return RenderedEmail(subject=subject, text=text, html=html)
