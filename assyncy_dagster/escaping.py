"""Text from outside made inert where it is written: CSV cells, markdown, log lines.

Scientists' names and portal error messages come from the portal; file names
and error text come from the SFTP host and rsync. Each of the three places an
operator reads them has one rule here, and every writer asks it:

- `csv_cell`: a spreadsheet must not run a cell as a formula (OWASP's CSV
  injection advice: a cell starting with `=`, `+`, `-`, `@`, tab or CR gets a
  leading `'`);
- `markdown_text`: the Dagster UI must show text, never a link, an image, HTML
  or emphasis (each character that could start markdown is backslash-escaped,
  which CommonMark renders as the character itself, an invisible word joiner
  keeps a bare URL from being linked, and the text is one line);
- `log_text` and `log_block`: one log record is one line, so a message cannot
  forge another record (control characters and line breaks are written as
  escapes; a traceback's lines are indented).

No I/O, no Dagster, no pandas: any floor may import it.
"""

from __future__ import annotations

import re

__all__ = ["LOG_INDENT", "WORD_JOINER", "csv_cell", "log_block", "log_text", "markdown_text"]

# What spreadsheets read as the start of a formula (OWASP, "CSV Injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# What can start markdown anywhere in a line: escapes, code, emphasis, strikethrough, links and
# images (`[`, `]`, `!`), HTML and <autolinks>, entities, table cells, headings and math. Only
# these are escaped: every escape makes the text longer, and the UI hides markdown longer than
# 1,000 characters behind a link.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_~\[\]!<>&|#$])")
# The Dagster UI's renderer (GitHub-flavoured) also links bare `https://…`, `www.…` and e-mail
# addresses, after escapes are undone, so a backslash cannot stop it: an invisible WORD JOINER
# inside `://`, `www.` and after `@` does (a copied URL then no longer works either).
WORD_JOINER = "\u2060"
_BARE_LINK = re.compile(r"(?i)(?<=:)(?=//)|(?<=\bwww)(?=\.)|(?<=@)")
# At a line's start: a list item (`- `, `+ `, `1. `, `1) `) or a heading's underline (`=`).
_BLOCK_START = re.compile(r"^(?:\d+[.)]|[-+=])")
# C0 and C1 controls, DEL, the Unicode line and paragraph separators, and the bidirectional
# overrides and isolates (which make a line read as something else in a terminal).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# A traceback's lines start with this, so that only a record's first line starts at column 0.
LOG_INDENT = "    "


def _escape_control(match: re.Match[str]) -> str:
    char = match.group(0)
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def one_line(value: object) -> str:
    """`value` with every run of white space (newlines too) made one space: a text from outside
    stays on its line (an e-mail's table cell, a `Key: value` line of bag-info.txt)."""
    return " ".join(str(value).split())


def csv_cell(value: object) -> object:
    """`value` safe for a spreadsheet: text that would start a formula gets a leading `'`.
    Anything that is not text (counts, missing values) is returned as it is, so numbers
    stay numbers."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def log_text(text: str) -> str:
    """`text` on one line: line breaks, tabs and other control characters written as escapes
    (`\\n`, `\\r`, `\\t`, `\\x1b`, `\\u2028`)."""
    return _CONTROL.sub(_escape_control, text)


def log_block(text: str) -> str:
    """A multi-line block (a traceback) for a log file: each of its lines escaped as `log_text`
    and indented by LOG_INDENT, so that none of them can pass for a record of its own."""
    return "\n".join(LOG_INDENT + log_text(line) for line in text.split("\n"))


def markdown_text(value: object, limit: int | None = None) -> str:
    """`value` as literal text inside markdown: one line (whitespace runs become one space),
    control characters escaped, at most `limit` characters (`…` ends a cut), and each character
    that could start markdown backslash-escaped, so no link, image, autolink, HTML tag, entity,
    emphasis, code span, table cell border, heading or list can form. None is the empty text."""
    text = "" if value is None else str(value)
    text = log_text(" ".join(text.split()))
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    text = _MARKDOWN_SPECIAL.sub(r"\\\1", text)
    text = _BARE_LINK.sub(WORD_JOINER, text)
    start = _BLOCK_START.match(text)
    return text if start is None else text[: start.end() - 1] + "\\" + text[start.end() - 1 :]
