"""The report's tables, plot and files (pandas and matplotlib; no servers)."""

import base64
import csv
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest
from markdown_it import MarkdownIt

from assyncy_dagster.outcomes import Outcome
from assyncy_dagster.report import EpnFacts, Holding, Verified, report_row
from assyncy_dagster.report_files import (
    ReportWriteError,
    attention_markdown,
    html_page,
    image_markdown,
    markdown_table,
    plot_png,
    report_frame,
    totals_by_project,
    totals_by_state,
    write_report,
)

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
ENDED = NOW - timedelta(days=3)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rows():
    verified = Verified(NOW.timestamp() - 86400, 5, 5000)
    return [
        report_row(f, NOW)
        for f in (
            EpnFacts(
                "12282a",
                "ny79",
                visit_end=ENDED,
                on_host=True,
                recorded=True,
                verified=verified,
                destination=Holding(5, 5000),
            ),
            EpnFacts(
                "12282b",
                "ny79",
                visit_end=ENDED,
                on_host=True,
                recorded=True,
                verified=verified,
                destination=Holding(4, 4000),
            ),
            EpnFacts(
                "13001a",
                "ab12",
                visit_end=ENDED,
                on_host=True,
                attempt=Outcome.FAILED,
                error="rsync said | no <b>way</b>\nsecond line",
            ),
            EpnFacts("14500a", None, visit_end=ENDED, on_host=True),
        )
    ]


def test_totals_count_epns_per_project_and_per_state():
    frame = report_frame(rows())
    by_project = totals_by_project(frame).set_index("project")
    assert by_project.loc["ny79"].to_dict() == {"epns": 2, "home": 1, "attention": 1, "destination_bytes": 9000}
    assert by_project.loc["ab12"].to_dict() == {"epns": 1, "home": 0, "attention": 1, "destination_bytes": 0}
    assert list(totals_by_state(frame)["state"]) == ["partial", "failed", "unmapped", "home"]


def test_unknown_source_counts_stay_empty_not_zero():
    frame = report_frame(rows()).set_index("epn")
    assert pd.isna(frame.loc["13001a", "source_files"])  # never synced: unknown, not "0 files"
    assert frame.loc["12282b", "source_files"] == 5


def test_markdown_cells_are_one_line_and_show_text_never_html():
    table = markdown_table(report_frame(rows()), ["epn", "last_error"])
    assert "| 13001a | rsync said \\| no \\<b\\>way\\</b\\> second line |" in table.splitlines()
    page = MarkdownIt("commonmark").enable("table").render(table)
    assert "<td>rsync said | no &lt;b&gt;way&lt;/b&gt; second line</td>" in page


def test_csv_cells_never_start_a_formula_and_counts_stay_numbers(tmp_path):
    hostile = report_row(
        EpnFacts(
            "12282c",
            "ny79",
            visit_end=ENDED,
            principal_scientist='=HYPERLINK("https://evil.example/x","click")',
            on_host=True,
            attempt=Outcome.FAILED,
            error="-2+3 @SUM(A1) said rsync",
        ),
        NOW,
    )
    frame = report_frame([*rows(), hostile])
    paths = write_report(tmp_path, frame, b"", "")
    with open(paths["csv"], newline="") as handle:
        table = {row["epn"]: row for row in csv.DictReader(handle)}
    assert table["12282c"]["principal_scientist"] == '\'=HYPERLINK("https://evil.example/x","click")'
    assert table["12282c"]["last_error"] == "'-2+3 @SUM(A1) said rsync"
    cells = [cell for row in table.values() for cell in row.values()]
    assert not [cell for cell in cells if cell.startswith(("=", "+", "-", "@", "\t", "\r"))]
    raw = paths["csv"].read_text().splitlines()
    assert ",5,5000,5,5000," in next(line for line in raw if line.startswith('"12282a"'))  # numbers, unquoted


def test_attention_markdown_names_the_partial_epns_to_backfill():
    text = attention_markdown(report_frame(rows()), "12282b")
    assert text.startswith("**3 EPN(s) need attention.**")
    assert "`12282b`" in text and "backfill" in text
    assert "| 12282a |" not in text  # home: not in the attention table


def test_attention_markdown_when_everything_is_home():
    assert attention_markdown(report_frame(rows()[:1]), "") == "Every EPN in the report is home."


def test_plot_is_a_png_and_travels_as_a_markdown_data_uri():
    png = plot_png(
        {(date(2026, 11, 16), "ny79"): 3 * 1024**3, (date(2026, 11, 9), "ab12"): 10},
        {date(2026, 11, 17): 2, date(2026, 11, 18): 1},
        NOW,
    )
    assert png.startswith(PNG_MAGIC)
    markdown = image_markdown(png, "the plot")
    assert markdown.startswith("![the plot](data:image/png;base64,")
    assert base64.b64decode(markdown.split(",", 1)[1].rstrip(")")) == png


def test_plot_without_any_data_still_draws():
    assert plot_png({}, {}, NOW).startswith(PNG_MAGIC)


def test_files_are_written_whole_and_the_page_escapes_what_it_shows(tmp_path):
    frame = report_frame(rows())
    page = html_page(frame, totals_by_project(frame), totals_by_state(frame), NOW, "12282b")
    paths = write_report(tmp_path / "reports", frame, plot_png({}, {}, NOW), page)
    assert paths["csv"].read_text().splitlines()[0].startswith('"epn","project","equipment","visit_start"')
    assert paths["png"].read_bytes().startswith(PNG_MAGIC)
    text = paths["html"].read_text()
    assert "&lt;b&gt;way&lt;/b&gt;" in text and "<b>way</b>" not in text
    assert 'src="repatriation_report.png"' in text
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == [
        "repatriation_report.csv",
        "repatriation_report.html",
        "repatriation_report.png",
    ]  # no temporary files left


def test_report_folder_that_is_a_file_names_report_dir(tmp_path):
    (tmp_path / "reports").write_text("not a folder")
    with pytest.raises(ReportWriteError, match=r"reports.*set report-dir"):
        write_report(tmp_path / "reports", report_frame(rows()), b"", "")
