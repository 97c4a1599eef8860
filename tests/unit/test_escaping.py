"""Text from outside, made inert where operators read it: a spreadsheet, the Dagster UI's
markdown, a log file. Rendered with a CommonMark renderer, as the UI renders markdown."""

from __future__ import annotations

import html
import re

import pytest
from markdown_it import MarkdownIt

from assyncy_dagster.escaping import LOG_INDENT, WORD_JOINER, csv_cell, log_block, log_text, markdown_text

FORMULAS = ['=HYPERLINK("https://evil.example/x","click")', "+1+1", "-2+3", "@SUM(A1)", "\t=1+1", "\r=1+1"]
MARKDOWN = [
    "[click](https://evil.example/x)",
    "![](https://evil.example/t.png)",
    "<img src=https://evil.example/t.png>",
    "<https://evil.example/auto>",
    "<script>alert(1)</script>",
    "**bold** _em_ `code` ~~gone~~",
    "&lt;b&gt; &#x3C;",
    "a | b",
    "[ref]: https://evil.example/r",
    "# heading",
    "- a list item",
    "1. a numbered one",
    "+ another",
    "$x^2$",
    "back\\slash",
]
RENDERER = MarkdownIt("commonmark").enable("table").enable("strikethrough")


def rendered(markdown: str) -> str:
    """The HTML a CommonMark renderer makes of `markdown`, without the invisible word joiners."""
    return RENDERER.render(markdown).replace(WORD_JOINER, "")


@pytest.mark.parametrize("formula", FORMULAS)
def test_a_cell_that_would_start_a_formula_gets_a_leading_quote(formula):
    assert csv_cell(formula) == "'" + formula


def test_other_cells_and_numbers_are_left_alone():
    assert csv_cell("Ada Lovelace") == "Ada Lovelace"
    assert csv_cell("a=b") == "a=b"
    assert csv_cell(-3) == -3 and csv_cell(None) is None


@pytest.mark.parametrize("text", MARKDOWN)
def test_markdown_shows_the_text_itself_never_a_link_an_image_or_html(text):
    page = rendered(markdown_text(text))
    assert "<a " not in page and "<img" not in page and "<script" not in page
    assert re.sub(r"</?(p|h\d)>", "", page).strip() == html.escape(text, quote=False)


def test_markdown_in_a_table_cell_stays_in_its_cell():
    row = "| " + markdown_text("x | [y](https://evil.example)") + " | z |"
    page = rendered("| a | b |\n|---|---|\n" + row)
    assert page.count("<td>") == 2 and "<a " not in page


def test_bare_urls_cannot_be_autolinked():
    # GFM links bare `https://…`, `www.…` and addresses after undoing escapes: a word joiner
    # inside each stops all three (tests/e2e/test_ui_browser.py checks it in the Dagster UI).
    assert markdown_text("https://evil.example/x") == f"https:{WORD_JOINER}//evil.example/x"
    assert markdown_text("see www.evil.example") == f"see www{WORD_JOINER}.evil.example"
    assert markdown_text("someone@evil.example") == f"someone@{WORD_JOINER}evil.example"


def test_only_what_could_start_markdown_is_escaped():
    # Every escape lengthens the text, and the UI folds markdown longer than 1,000 characters.
    assert markdown_text("2026-11-15T21:12+00:00 (partial transfer), 3 files.") == (
        "2026-11-15T21:12+00:00 (partial transfer), 3 files."
    )


def test_markdown_is_one_line_and_cut_at_the_limit():
    assert markdown_text("a\nb\r\nc\td") == "a b c d"
    assert markdown_text("x" * 50, limit=10) == "x" * 9 + "…"
    assert markdown_text(None) == ""


def test_a_log_message_stays_on_one_line():
    text = log_text("portal says\n2026-01-01 00:00:00,000 ERROR assyncy forged\r\x1b[31m\u2028\u202e")
    assert text == "portal says\\n2026-01-01 00:00:00,000 ERROR assyncy forged\\r\\x1b[31m\\u2028\\u202e"
    assert len(text.splitlines()) == 1


def test_a_traceback_keeps_its_lines_indented():
    block = log_block("Traceback (most recent call last):\nPortalError: bad\n2026-01-01 forged\x1b")
    assert block.splitlines() == [
        LOG_INDENT + "Traceback (most recent call last):",
        LOG_INDENT + "PortalError: bad",
        LOG_INDENT + "2026-01-01 forged\\x1b",
    ]


def test_one_line_makes_every_run_of_white_space_one_space():
    from assyncy_dagster.escaping import one_line

    assert one_line("Dr A.\n  Smith\r\n\tX-Injected: yes") == "Dr A. Smith X-Injected: yes"
    assert one_line(42) == "42"
