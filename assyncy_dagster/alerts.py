"""The e-mails ASSyncy sends: the unknown-EPN alert and the failure alert.

Pure logic, no Dagster imports: the epnalert asset, the CLI and the tests all
render through here; `mail.py` makes the rendered e-mail a message and sends it.
Every text is a Jinja template in etc/, none in this module: ``epnalert-text.j2``
and ``epnalert-html.j2`` (named in config.yml), ``stuck-section-text.j2`` and
``stuck-section-html.j2`` (the digest's stuck section for an admin's older
templates), ``failure-alert-text.j2`` and ``failure-alert-html.j2``. The last
four have fixed names: a copy in ``epnalert-template-folder`` wins, and a folder
without one gets the shipped file.

The unknown-EPN alert keeps HPC ASSyncy's contract, so that an admin's own
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

The daily digest also carries the stuck-EPN canary (see canary.py): EPNs due
for longer than ``stuck-after-hours`` without coming home, and a portal or
SFTP-host refresh failing for as long, each with its reason:

* ``stuck``: one dict per entry, oldest first, with ``name`` (the EPN, or
  ``portal`` / ``SFTP host``), ``since`` (an aware datetime in the digest's
  time zone), ``since_text``, ``hours`` (whole hours since) and ``reason``;
  ``stuck_text`` is the same, pre-formatted, one line each;
  ``stuck_after_hours`` the setting;
* ``digest_notes``: what the digest could not ask (the host, the portal).

A template that names none of ``stuck``, ``stuck_text`` (or ``digest_notes``)
gets the stuck section appended (``stuck-section-*.j2``, before ``</body>`` in
the HTML part), so an admin's own templates from HPC ASSyncy still report
stuck EPNs. With stuck entries the subject becomes ``Unknown ownership of
EPNs; stuck: 12282a, ...``; a digest goes out when either list holds something.

Unlike HPC ASSyncy, the HTML part is rendered with autoescaping: a scientist
called ``<script>`` arrives as text, not markup. Nothing from the portal is
ever marked safe. Both environments use ``StrictUndefined``, so a misspelt
variable is an error naming the template file and line, not a blank.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
import jinja2.meta
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from .domain import Person, Visit
from .epn import base_number, validate_epn
from .etc_files import etc_path
from .mail import RenderedEmail

SUBJECT = "Unknown ownership of EPNs"
EPNS_PER_ROW = 8
SCIENTIST_HEADERS = ("First name", "Last name", "Email")
# A failure alert is a pointer to the run, not a log: the full error is in Dagster.
MAX_ERROR_LINES = 2
MAX_ERROR_CHARS = 300
# The templates of the other e-mail texts, shipped in etc/ beside epnalert-text.j2 and
# epnalert-html.j2. A copy in epnalert-template-folder wins; a folder without one (set up
# before these existed) gets the shipped file.
FAILURE_TEXT = "failure-alert-text.j2"
FAILURE_HTML = "failure-alert-html.j2"
STUCK_SECTION_TEXT = "stuck-section-text.j2"
STUCK_SECTION_HTML = "stuck-section-html.j2"


class TemplateError(Exception):
    """An e-mail template is missing, does not parse, or fails to render.

    `template` is the file (a path when known), `lineno` the line or None.
    """

    def __init__(self, template: str, problem: str, lineno: int | None = None):
        self.template = template
        self.lineno = lineno
        self.problem = problem
        where = f"{template}, line {lineno}" if lineno else template
        super().__init__(f"{where}: {problem}")


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


@dataclass(frozen=True)
class StuckEntry:
    """An EPN (or `portal` / `SFTP host`) stuck since `since` (aware), and why, for the digest."""

    name: str
    since: datetime
    reason: str


# -- the seed's pre-formatted strings ---------------------------------------


def format_table(rows: Sequence[Sequence[str]], headers: Sequence[str] | None = None) -> str:
    """Rows as `tabulate`'s "simple" table, the layout HPC ASSyncy's e-mails used.

    With headers: header line, dashed rule, rows. Without: the rows between two
    dashed rules. Short rows are padded; trailing blanks are dropped.
    """
    if not rows and not headers:
        return ""
    width = max([len(headers or ())] + [len(row) for row in rows])
    cells = [[str(c) for c in row] + [""] * (width - len(row)) for row in rows]
    head = [str(h) for h in headers] + [""] * (width - len(headers)) if headers else None
    widths = [0] * width
    for i in range(width):
        column = [row[i] for row in cells]
        widths[i] = max([len(c) for c in column] + ([len(head[i]) + 2] if head else [0]))

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    body = [line(row) for row in cells]
    if head is not None:
        return "\n".join([line(head), rule, *body])
    return "\n".join([rule, *body, rule])


def rows_of(items: Sequence[str], size: int = EPNS_PER_ROW) -> list[list[str]]:
    """`items` cut into rows of `size` (the last one may be shorter)."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


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


def _stuck(entries: Sequence[StuckEntry], now: datetime, zone: str | None) -> list[dict[str, Any]]:
    where = ZoneInfo(zone) if zone else UTC
    found = []
    for entry in entries:
        since = entry.since.astimezone(where)
        found.append(
            {
                "name": _one_line(entry.name),
                "since": since,
                "since_text": since.strftime("%Y-%m-%d %H:%M %Z"),
                "hours": max(0, int((now - entry.since).total_seconds() // 3600)),
                "reason": _one_line(entry.reason),
            }
        )
    return found


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
    stuck_list = _stuck(stuck, generated_at, zone)
    return {
        "stuck": stuck_list,
        "stuck_text": "\n".join(
            f"- {s['name']}, since {s['since_text']} ({s['hours']} h): {s['reason']}" for s in stuck_list
        ),
        "stuck_after_hours": f"{stuck_after_hours:g}",
        "digest_notes": [_one_line(n) for n in notes],
        "epn_details": "".join(details),
        "unknown_epns": format_table(rows_of(unknown)),
        "epns": epns,
        "unknown_epn_list": unknown,
        "unknown_epn_rows": rows_of(unknown),
        "digest": digest,
        "generated_at": generated_at,
    }


# -- rendering ----------------------------------------------------------------


def _environment(folder: Path, *, html: bool) -> jinja2.Environment:
    # autoescape=True rather than select_autoescape: admins name templates *.j2,
    # which extension-based selection would leave unescaped. Sandboxed: a template
    # is data, and must never reach Python (`cycler.__init__.__globals__.os` ...).
    return SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(folder)),
        autoescape=html,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def _template_line(exc: BaseException, folder: Path) -> tuple[str | None, int | None]:
    """The template file and line an error was raised at, from Jinja's rewritten traceback."""
    root = os.path.realpath(folder)
    found: tuple[str | None, int | None] = (None, None)
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename and os.path.realpath(frame.filename).startswith(root + os.sep):
            found = (frame.filename, frame.lineno)
    return found


def _render(folder: Path, name: str, variables: dict[str, Any], *, html: bool, setting: str | None) -> str:
    """`name` in `folder` rendered; `setting` is the config.yml key that names it (None: a fixed name)."""
    folder = Path(folder)
    path = folder / name
    env = _environment(folder, html=html)
    try:
        template = env.get_template(name)
    except jinja2.TemplateNotFound as exc:
        missing = str(path) if exc.name == name else f"{folder / str(exc.name)} (included from {path})"
        check = f"{setting} and epnalert-template-folder" if setting else "epnalert-template-folder"
        raise TemplateError(missing, f"template not found; check {check} in config.yml") from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(exc.filename or str(path), f"syntax error: {exc.message}", exc.lineno) from None
    except OSError as exc:
        raise TemplateError(str(path), f"cannot read: {exc.strerror or exc}") from None
    try:
        return template.render(**variables)
    except jinja2.TemplateSyntaxError as exc:  # in an included template
        raise TemplateError(exc.filename or str(path), f"syntax error: {exc.message}", exc.lineno) from None
    except Exception as exc:  # any failure inside an admin's template is a template problem
        filename, lineno = _template_line(exc, folder)
        problem = exc.message if isinstance(exc, jinja2.TemplateError) and exc.message else str(exc)
        if isinstance(exc, SecurityError):
            problem = f"refused by the template sandbox: {problem} (templates may only format the alert's variables)"
        elif isinstance(exc, jinja2.UndefinedError):
            problem = f"{problem} (available variables: {', '.join(sorted(variables))})"
        raise TemplateError(filename or template.filename or str(path), problem, lineno) from None


def shipped_or_admin(name: str, template_folder: Path | None) -> Path:
    """The folder to read the fixed-name template `name` from: the admin's epnalert-template-folder
    when it holds one, else etc/ as shipped."""
    if template_folder is not None and (Path(template_folder) / name).is_file():
        return Path(template_folder)
    return etc_path()


def _names_used(folder: Path, name: str) -> set[str]:
    """The variables a template (and the templates it includes or extends) refers to."""
    env = _environment(folder, html=False)
    seen: set[str] = set()
    loader = env.loader
    assert loader is not None  # _environment always gives a FileSystemLoader on the folder
    used: set[str] = set()
    pending = [name]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            source = loader.get_source(env, current)[0]
            ast = env.parse(source)
        except (jinja2.TemplateError, OSError):
            continue  # rendering has already said what is wrong with it
        used |= jinja2.meta.find_undeclared_variables(ast)
        pending.extend(t for t in jinja2.meta.find_referenced_templates(ast) if isinstance(t, str))
    return used


def _with_canary(body: str, folder: Path, name: str, variables: dict[str, Any], *, html: bool) -> str:
    """`body` with the built-in stuck section appended, when its template shows neither the
    stuck entries nor the notes (an admin's template from before the canary)."""
    if not (variables["stuck"] or variables["digest_notes"]):
        return body
    used = _names_used(folder, name)
    shown = dict(variables)
    if used & {"stuck", "stuck_text"}:
        shown["stuck"] = []
    if "digest_notes" in used:
        shown["digest_notes"] = []
    if not (shown["stuck"] or shown["digest_notes"]):
        return body
    section_name = STUCK_SECTION_HTML if html else STUCK_SECTION_TEXT
    section = _render(shipped_or_admin(section_name, folder), section_name, shown, html=html, setting=None)
    end = body.lower().rfind("</body>") if html else -1
    return body[:end] + section + body[end:] if end >= 0 else body + section


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
    text = _render(folder, text_template, variables, html=False, setting="epnalert-template-text")
    html = _render(folder, html_template, variables, html=True, setting="epnalert-template-html")
    text = _with_canary(text, folder, text_template, variables, html=False)
    html = _with_canary(html, folder, html_template, variables, html=True)
    subject = SUBJECT
    if stuck:
        names = [s["name"] for s in variables["stuck"]]
        subject += "; stuck: " + ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return RenderedEmail(subject=subject, text=text, html=html)


def _sample_entries() -> list[AlertEntry]:
    start = datetime(2026, 3, 1, 8, 0, tzinfo=timezone(timedelta(hours=11)))
    jane = Person("Jane", "Doe", "jane.doe@example.edu")
    ming = Person("Ming", "Li", "ming.li@example.edu")
    return [
        AlertEntry("12282a", (Visit(1, "12282a", start, start + timedelta(hours=24), jane, (jane, ming), 23),)),
        AlertEntry("12300b", (Visit(2, "12300b", start, start + timedelta(hours=8), None, (), 24),)),
        *(AlertEntry(f"{13000 + i}a") for i in range(10)),
    ]


def _sample_canary() -> dict[str, Any]:
    since = datetime.now(UTC) - timedelta(hours=30)
    return {
        "stuck": [
            StuckEntry("12282b", since, "failing: 2 run(s) failed in a row; last error: rsync exit 23"),
            StuckEntry("SFTP host", since, "SSH authentication failing at every refresh"),
        ],
        "notes": ["The SFTP host could not be listed for unmapped EPNs: ssh: Permission denied"],
    }


def check_templates(template_folder: Path, text_template: str, html_template: str) -> list[str]:
    """Problems with the e-mail templates, one line each; empty when each renders a sample e-mail.

    The two named in config.yml, and the fixed-name ones (the failure alert, the digest's stuck
    section) wherever they are read from: the admin's folder, else etc/ as shipped."""
    folder = Path(template_folder)
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    problems: list[str] = []
    for name, html, setting in (
        (text_template, False, "epnalert-template-text"),
        (html_template, True, "epnalert-template-html"),
    ):
        # Both a new-EPN alert and a digest, so that either branch of an {% if digest %} is tried.
        for digest in (False, True):
            variables = template_variables(_sample_entries(), digest=digest, **(_sample_canary() if digest else {}))
            try:
                _render(folder, name, variables, html=html, setting=setting)
            except TemplateError as exc:
                if str(exc) not in problems:
                    problems.append(str(exc))
                break
    a_digest = template_variables(_sample_entries(), digest=True, **_sample_canary())
    failure = _failure_variables("12282a", "rsync exit 23", "abc123", "https://dagster.example.edu/runs/abc123")
    for name, html, variables in (
        (STUCK_SECTION_TEXT, False, a_digest),
        (STUCK_SECTION_HTML, True, a_digest),
        (FAILURE_TEXT, False, failure),
        (FAILURE_HTML, True, failure),
    ):
        try:
            _render(shipped_or_admin(name, folder), name, variables, html=html, setting=None)
        except TemplateError as exc:
            problems.append(str(exc))
    return problems


# -- the failure alert --------------------------------------------------------


def _short_error(error: str) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = "\n".join(lines[:MAX_ERROR_LINES])
    truncated = len(lines) > MAX_ERROR_LINES
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS].rstrip()
        truncated = True
    return (text + " [...]" if truncated else text) or "(no error message)"


def _one_line(value: str) -> str:
    return " ".join(str(value).split())


def render_failure_alert(
    epn: str, error: str, run_id: str, run_url: str | None = None, template_folder: Path | None = None
) -> RenderedEmail:
    """A short e-mail saying that repatriating `epn` failed, with the error and a link to the run,
    from failure-alert-text.j2 and failure-alert-html.j2 (the admin's `template_folder` first, then etc/)."""
    variables = _failure_variables(epn, error, run_id, run_url)
    text = _render(shipped_or_admin(FAILURE_TEXT, template_folder), FAILURE_TEXT, variables, html=False, setting=None)
    html = _render(shipped_or_admin(FAILURE_HTML, template_folder), FAILURE_HTML, variables, html=True, setting=None)
    return RenderedEmail(subject=f"Repatriation of EPN {variables['epn']} failed", text=text, html=html)


def _failure_variables(epn: str, error: str, run_id: str, run_url: str | None) -> dict[str, Any]:
    """What failure-alert-text.j2 and failure-alert-html.j2 may use."""
    return {
        "epn": _one_line(epn),
        "error": _short_error(error),
        "run_id": _one_line(run_id),
        "run_url": _one_line(run_url) if run_url else None,
        # Only web links become hrefs: a javascript: URL stays text.
        "link": bool(run_url and _one_line(run_url).lower().startswith(("http://", "https://"))),
    }
