"""Every e-mail template tried on a sample e-mail, so that `assyncy check-config` names a broken
one before a real alert or digest would have failed to render."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from ..domain import Person, Visit
from .failure import FAILURE_HTML, FAILURE_TEXT, failure_variables
from .stuck_section import STUCK_SECTION_HTML, STUCK_SECTION_TEXT, StuckEntry
from .templates import TemplateError, render, render_fixed
from .unknown_epn import AlertEntry, template_variables


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
                render(folder, name, variables, html=html, setting=setting)
            except TemplateError as exc:
                if str(exc) not in problems:
                    problems.append(str(exc))
                break
    a_digest = template_variables(_sample_entries(), digest=True, **_sample_canary())
    failure = failure_variables("12282a", "rsync exit 23", "abc123", "https://dagster.example.edu/runs/abc123")
    for name, html, variables in (
        (STUCK_SECTION_TEXT, False, a_digest),
        (STUCK_SECTION_HTML, True, a_digest),
        (FAILURE_TEXT, False, failure),
        (FAILURE_HTML, True, failure),
    ):
        try:
            render_fixed(name, folder, variables, html=html)
        except TemplateError as exc:
            problems.append(str(exc))
    return problems
