"""The repatriation report as tables, a plot and files.

report.py decides each EPN's state; this module turns its rows into a pandas
table, the totals per project and per state, the markdown the Dagster UI
shows, a PNG plot (bytes repatriated per project per week, and the backlog
over time) and the CSV, PNG and HTML files written under `report-dir`.

matplotlib is used through its object-oriented API (`Figure`, no pyplot), so
drawing needs no display, keeps no global state, and is safe in any thread.
No Dagster imports.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .escaping import csv_cell, markdown_text
from .report import COLUMNS, MEANING, URGENCY, State, attention_order
from .statefiles import write_atomically

CSV_NAME = "repatriation_report.csv"
PNG_NAME = "repatriation_report.png"
HTML_NAME = "repatriation_report.html"
ATTENTION_LIMIT = 100  # rows in the UI's attention table; the CSV has them all
_COUNT_COLUMNS = ["source_files", "source_bytes", "destination_files", "destination_bytes"]


class ReportWriteError(Exception):
    """The report's files could not be written; the message names the folder."""


def report_frame(rows: Sequence[Mapping[str, object]]) -> pd.DataFrame:
    """The full report, one row per EPN, in the order of report.COLUMNS."""
    frame = pd.DataFrame(list(rows), columns=COLUMNS)
    for column in _COUNT_COLUMNS:
        frame[column] = frame[column].astype("Int64")  # missing stays missing, not 0.0
    unmapped_last = frame["project"] == ""
    return (
        frame.assign(_last=unmapped_last)
        .sort_values(["_last", "project", "epn"], ignore_index=True)
        .drop(columns="_last")
    )


def totals_by_project(frame: pd.DataFrame) -> pd.DataFrame:
    """Per project: EPNs, how many are home, how many need attention, bytes at the destination."""
    mapped = frame[frame["project"] != ""]
    if mapped.empty:
        return pd.DataFrame(columns=["project", "epns", "home", "attention", "destination_bytes"])
    grouped = mapped.groupby("project", sort=True)
    return pd.DataFrame(
        {
            "epns": grouped.size(),
            "home": grouped["state"].agg(lambda s: int((s == State.HOME.value).sum())),
            "attention": grouped["state"].agg(lambda s: int((s != State.HOME.value).sum())),
            "destination_bytes": grouped["destination_bytes"].sum().astype("int64"),
        }
    ).reset_index()


def totals_by_state(frame: pd.DataFrame) -> pd.DataFrame:
    """Per state (most urgent first): how many EPNs, and what the state means."""
    counts = frame["state"].value_counts()
    return pd.DataFrame(
        [(s.value, int(counts[s.value]), MEANING[s]) for s in URGENCY if s.value in counts.index],
        columns=["state", "epns", "meaning"],
    )


# -- markdown for the Dagster UI ---------------------------------------------------------------


def _cell(value: object, limit: int = 160) -> str:
    missing = value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value))
    return markdown_text(None if missing else value, limit)


def markdown_table(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured markdown table (what the UI's markdown metadata renders). Every cell
    and header is literal text (escaping.markdown_text): a scientist's name, a file name or a
    portal error never becomes a link, an image or HTML in the UI."""
    columns = list(columns or frame.columns)
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    for record in frame[columns].itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in record) + " |")
    return "\n".join(lines)


def attention_markdown(frame: pd.DataFrame, repair: str, limit: int = ATTENTION_LIMIT) -> str:
    """The EPNs that are not home, the most urgent first, and how to repair the partial and corrupt ones."""
    needing = pd.DataFrame(attention_order(frame.to_dict("records")), columns=COLUMNS)
    if needing.empty:
        return "Every EPN in the report is home."
    shown = markdown_table(needing.head(limit), ["epn", "project", "state", "detail", "visit_end"])
    parts = [f"**{len(needing)} EPN(s) need attention.**", "", shown]
    if len(needing) > limit:
        parts += ["", f"… and {len(needing) - limit} more in the CSV."]
    if repair:
        parts += [
            "",
            (
                f"**Repair:** one backfill of `epn_data` for the partial and corrupt EPNs (Materialize → "
                f"partitions `{repair}`) fetches what is missing or damaged and verifies it again."
            ),
        ]
    return "\n".join(parts)


def image_markdown(png: bytes, alt: str) -> str:
    """The plot as a markdown image with a data: URI: the Dagster UI's markdown renderer shows
    it in the asset's page (its sanitiser allows `data:` image sources)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


# -- the plot ------------------------------------------------------------------------------------


def _byte_unit(largest: float) -> tuple[float, str]:
    for power, unit in ((4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
        if largest >= 1024**power:
            return 1024.0**power, unit
    return 1.0, "bytes"


def plot_png(weekly: Mapping[tuple[date, str], int], backlog: Mapping[date, int], generated: datetime) -> bytes:
    """Two panels: bytes repatriated per project per week (stacked bars), and the backlog per day."""
    figure = Figure(figsize=(9, 6), dpi=80, layout="constrained")
    bars, line = figure.subplots(2, 1)
    if weekly:
        table = pd.Series(weekly).unstack(fill_value=0).sort_index()
        first, last = table.index[0], table.index[-1]
        weeks = [first + timedelta(weeks=i) for i in range((last - first).days // 7 + 1)]
        table = table.reindex(weeks, fill_value=0)  # a week that copied nothing shows as nothing
        scale, unit = _byte_unit(float(table.sum(axis=1).max()))
        positions = list(range(len(table)))
        bottom = [0.0] * len(table)
        for project in table.columns:
            heights = [v / scale for v in table[project]]
            bars.bar(positions, heights, width=0.8, bottom=bottom, label=project)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        step = max(1, len(positions) // 12)  # at most a dozen labels
        bars.set_xticks(positions[::step], [f"week of {week.isoformat()}" for week in table.index[::step]])
        bars.set_ylabel(unit)
        bars.legend(title="project", fontsize="small")
    else:
        bars.text(0.5, 0.5, "no data copied yet", ha="center", va="center", transform=bars.transAxes)
    bars.set_title("Bytes repatriated per project per week")
    if backlog:
        days = sorted(backlog)
        counts = [backlog[d] for d in days]
        # Repeat the last day's count at its end, so that today is drawn as a step too.
        days, counts = [*days, days[-1] + timedelta(days=1)], [*counts, counts[-1]]
        line.step(days, counts, where="post", color="tab:red")
        line.fill_between(days, counts, step="post", color="tab:red", alpha=0.2)
        line.set_ylim(bottom=0, top=max(counts) + 1)
        line.yaxis.set_major_locator(MaxNLocator(integer=True))
        line.set_ylabel("EPNs")
    else:
        line.text(0.5, 0.5, "no EPN has been due yet", ha="center", va="center", transform=line.transAxes)
    line.set_title("Backlog: EPNs whose visit had ended and that were not home yet, per day")
    figure.suptitle(f"Repatriation report, {generated.isoformat(timespec='minutes')}", fontsize="medium")
    for axes in (bars, line):
        axes.tick_params(axis="x", labelrotation=30, labelsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# -- files ---------------------------------------------------------------------------------------


def html_page(
    frame: pd.DataFrame, by_project: pd.DataFrame, by_state: pd.DataFrame, generated: datetime, repair: str
) -> str:
    """A self-describing page beside the PNG and the CSV (every value escaped)."""
    needing = pd.DataFrame(attention_order(frame.to_dict("records")), columns=COLUMNS)
    repair_html = (
        f"<p><strong>Repair:</strong> one backfill of <code>epn_data</code> for the partitions "
        f"<code>{html.escape(repair)}</code> fetches what is missing or damaged.</p>"
        if repair
        else ""
    )

    def table(data: pd.DataFrame) -> str:
        return data.to_html(index=False, escape=True, na_rep="", border=0, classes="report")

    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Repatriation report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table.report {{ border-collapse: collapse; font-size: 0.85em; margin-bottom: 2em; }}
table.report th, table.report td {{ border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }}
</style></head><body>
<h1>Repatriation report</h1>
<p>Generated {html.escape(generated.isoformat(timespec="seconds"))}; the full table is in
<a href="{CSV_NAME}">{CSV_NAME}</a>.</p>
<img src="{PNG_NAME}" alt="Bytes repatriated per project per week, and the backlog over time">
<h2>Totals per state</h2>
{table(by_state)}
<h2>Totals per project</h2>
{table(by_project)}
<h2>Needing attention ({len(needing)})</h2>
{repair_html}
{table(needing) if not needing.empty else "<p>Every EPN in the report is home.</p>"}
<h2>Every EPN ({len(frame)})</h2>
{table(frame)}
</body></html>
"""


def csv_text(frame: pd.DataFrame) -> str:
    """The table as CSV for a spreadsheet, as OWASP advises against formula injection: every text
    cell that would start a formula gets a leading `'` (escaping.csv_cell), and every text cell is
    quoted (a `;` in a cell cannot start a new one where `;` is the separator). Count columns stay
    numbers."""
    safe = frame.copy()
    for column in safe.columns:
        if not pd.api.types.is_numeric_dtype(safe[column]) and not pd.api.types.is_bool_dtype(safe[column]):
            safe[column] = safe[column].map(csv_cell, na_action="ignore")
    return safe.to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC)


def write_report(folder: Path, frame: pd.DataFrame, png: bytes, page: str) -> dict[str, Path]:
    """Write the CSV, the PNG and the HTML page into `folder` (created if missing). Returns their paths."""
    paths = {"csv": folder / CSV_NAME, "png": folder / PNG_NAME, "html": folder / HTML_NAME}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(paths["csv"], csv_text(frame).encode("utf-8"))
        write_atomically(paths["png"], png)
        write_atomically(paths["html"], page.encode("utf-8"))
    except OSError as exc:
        raise ReportWriteError(
            f"cannot write the repatriation report into {folder}: {exc.strerror or exc} "
            "(set report-dir in config.yml to a folder the service account can write)"
        ) from None
    return paths
