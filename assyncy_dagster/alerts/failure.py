"""The repatriation-failure alert: a short e-mail saying that repatriating an EPN failed, with the
error and a link to the run, from ``failure-alert-text.j2`` and ``failure-alert-html.j2`` (the
admin's ``epnalert-template-folder`` first, then etc/). A pointer to the run, not a log: the full
error is in Dagster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..escaping import one_line
from ..mail import RenderedEmail
from .templates import render_fixed

FAILURE_TEXT = "failure-alert-text.j2"
FAILURE_HTML = "failure-alert-html.j2"
MAX_ERROR_LINES = 2
MAX_ERROR_CHARS = 300


def _short_error(error: str) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = "\n".join(lines[:MAX_ERROR_LINES])
    truncated = len(lines) > MAX_ERROR_LINES
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS].rstrip()
        truncated = True
    return (text + " [...]" if truncated else text) or "(no error message)"


def failure_variables(epn: str, error: str, run_id: str, run_url: str | None) -> dict[str, Any]:
    """What failure-alert-text.j2 and failure-alert-html.j2 may use."""
    return {
        "epn": one_line(epn),
        "error": _short_error(error),
        "run_id": one_line(run_id),
        "run_url": one_line(run_url) if run_url else None,
        # Only web links become hrefs: a javascript: URL stays text.
        "link": bool(run_url and one_line(run_url).lower().startswith(("http://", "https://"))),
    }


def render_failure_alert(
    epn: str, error: str, run_id: str, run_url: str | None = None, template_folder: Path | None = None
) -> RenderedEmail:
    """A short e-mail saying that repatriating `epn` failed, with the error and a link to the run,
    from failure-alert-text.j2 and failure-alert-html.j2 (the admin's `template_folder` first, then etc/)."""
    variables = failure_variables(epn, error, run_id, run_url)
    text = render_fixed(FAILURE_TEXT, template_folder, variables, html=False)
    html = render_fixed(FAILURE_HTML, template_folder, variables, html=True)
    return RenderedEmail(subject=f"Repatriation of EPN {variables['epn']} failed", text=text, html=html)
