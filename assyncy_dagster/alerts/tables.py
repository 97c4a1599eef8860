"""The "simple" table layout of the ``tabulate`` package, which HPC ASSyncy's e-mails used and an
admin's templates from it still expect: columns two spaces apart, each at least two wider than its
header."""

from __future__ import annotations

from collections.abc import Sequence

EPNS_PER_ROW = 8


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
