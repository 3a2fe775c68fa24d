"""The book's Markdown tables, filled from metrics dicts and metrics files (never typed-in numbers).

A chapter displays one with ``display(Markdown(tables.file_table(...)))``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from esol_lib.book.charts import stage_label
from esol_lib.method.metrics import read_metrics

__all__ = ["markdown_table", "metrics_table", "file_table"]


def markdown_table(header: Sequence[object], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table: one header row, then one line per row; every cell is shown with ``str``."""
    header = [str(h) for h in header]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(c) for c in row]
        if len(cells) != len(header):
            raise ValueError(f"markdown_table: a row has {len(cells)} cells for {len(header)} columns: {cells}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


_COLUMN_NAMES = {"miou": "mIoU", "ap": "AP"}


def metrics_table(
    rows: Mapping[str, dict],
    columns: Sequence[str] = ("miou", "precision", "recall", "f1"),
    extra: Sequence[str] = ("threshold",),
    paper: Mapping[str, float] | None = None,
) -> str:
    """A Markdown table (percentages) with one row per named metrics dict; missing values as '–'.

    A row named after a stage (``baseline``, ``expansion``, ``shrinkage``) is shown by its book name
    (:data:`~esol_lib.book.charts.STAGE_NAMES`). A dict with a ``"diverged"`` entry (an ablation whose
    training ran away) says so in every metric cell. With ``paper`` (row name → the paper's seed mIoU,
    %) a last column quotes it.
    """
    head = ["", *[_COLUMN_NAMES.get(c, c) for c in columns], *extra] + (["paper mIoU (VOC)"] if paper else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in rows.items():
        cells = [stage_label(name)]
        if m and "diverged" in m:
            cells += ["diverged"] * (len(columns) + len(extra))
        else:
            cells += [f"{100 * m[c]:.1f}" if m and m.get(c) is not None else "–" for c in columns]
            cells += [f"{m[e]:.2f}" if m and isinstance(m.get(e), (int, float)) else "–" for e in extra]
        if paper:
            cells.append("–" if paper.get(name) is None else f"{paper[name]:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def file_table(rows: Mapping[str, Mapping[str, object]], key: str = "miou", missing: str = "not run") -> str:
    """A Markdown table whose numbers are read from metrics files (for the paper-vs-run tables).

    ``rows`` maps a row name to ``{column: cell}``. A cell that is a path (``str`` paths are not
    paths here: use :class:`pathlib.Path`) shows ``key`` of that metrics JSON file as a percentage
    with one decimal, or ``missing`` when the file does not exist; a ``(path, key)`` tuple reads
    another key; any other cell (a number quoted from the paper, a note) is shown as it is.
    Columns are the union of the rows' columns in first-seen order; absent cells are '–'.
    """

    def cell(value) -> str:
        k = key
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], Path):
            value, k = value
        if isinstance(value, Path):
            if not value.is_file():
                return missing
            v = read_metrics(value).get(k)
            return f"{100 * v:.1f}" if isinstance(v, (int, float)) else "–"
        return "–" if value is None else str(value)

    columns = list(dict.fromkeys(c for r in rows.values() for c in r))
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(cell(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)
