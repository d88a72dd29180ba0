"""Rendering result tables: the Markdown view of a table, its report page (HTML), and atomic CSV
and Markdown files. A view is a mapping ``header -> (kind, column)`` (see :func:`cells`); the same
view renders the Markdown file and the report page, both from the table's data."""

from __future__ import annotations

import html
import math
import os
import re
from pathlib import Path

import polars as pl

from sftrl.atomic import write_text
from sftrl.constants import INTERVAL

View = dict[str, tuple[str, str | tuple[str, ...]]]


def ci(prefix: str) -> tuple[str, tuple[str, str, str]]:
    """The view of an accuracy with its 95% interval: columns ``<prefix>accuracy``,
    ``<prefix>ci_low`` and ``<prefix>ci_high`` shown as ``41.0 [34.9, 47.4]``."""
    return ("ci", tuple(f"{prefix}{c}" for c in INTERVAL))


def _fmt(value, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if kind == "pct":
        return f"{100 * value:.1f}"
    if kind == "raw1":
        return f"{value:.1f}"
    if kind == "sci":
        return f"{value:.2e}"
    if kind == "kl":
        return f"{value:.3f}"
    if kind == "yesno":
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _cell(row: dict, kind: str, col) -> str:
    if kind == "arrow":
        return f"{row[col[0]]} → {row[col[1]]}"
    if kind == "kl":
        a, b = (row[c] for c in col)
        return f"{_fmt(a, 'kl')} / {_fmt(b, 'kl')}"
    if kind == "arrow_pct":
        return f"{_fmt(row[col[0]], 'pct')} → {_fmt(row[col[1]], 'pct')}"
    if kind == "ci":
        v, lo, hi = (row[c] for c in col)
        if v is None:
            return "–"
        return (
            _fmt(v, "pct") if lo is None and hi is None else f"{_fmt(v, 'pct')} [{_fmt(lo, 'pct')}, {_fmt(hi, 'pct')}]"
        )
    if kind == "dpct":
        v = row[col]
        return "–" if v is None else _dpct(v)
    if kind.startswith("ci_"):  # another kind with an interval: ci_dpct, ci_raw1, ci_sci
        v, lo, hi = (row[c] for c in col)
        inner = kind[3:]
        if v is None:
            return "–"
        return (
            _show(v, inner)
            if lo is None and hi is None
            else f"{_show(v, inner)} [{_show(lo, inner)}, {_show(hi, inner)}]"
        )
    if kind.startswith("by_seed:"):  # each seed's value, " / "-separated (sftrl.tables.seeds)
        inner = kind.split(":", 1)[1]
        text = row[col]
        if text is None:
            return "–"
        values = [None if t.strip() == "–" else float(t) for t in str(text).split(" / ")]
        return " / ".join(_show(v, inner) for v in values)
    return _fmt(row[col], kind)


def _dpct(value: float) -> str:
    return f"{100 * value:+.1f}"


def _show(value, kind: str) -> str:
    """One number of an interval or a per-seed list, as ``kind`` shows it (``dpct``: signed points)."""
    if kind == "dpct":
        return "–" if value is None else _dpct(value)
    return _fmt(value, kind)


def cells(df: pl.DataFrame, view: View) -> tuple[list[str], list[list[str]]]:
    """(headers, rows of cell texts) of ``df`` through ``view``: ``header -> (kind, column)``;
    ``kind`` is ``pct`` (a fraction shown as a percentage), ``ci`` (``column`` is a triple:
    value, low, high → ``41.0 [34.9, 47.4]``), ``dpct`` (a difference of fractions in points,
    signed), ``arrow`` (two columns, ``a → b``), ``arrow_pct``, ``kl`` (two numbers, ``a / b``),
    ``raw1``, ``sci``, ``yesno`` or ``raw``; across seeds (:mod:`sftrl.tables.seeds`) also
    ``ci_dpct``, ``ci_raw1``, ``ci_sci`` (a value and its interval) and ``by_seed:<kind>`` (each
    seed's value). Missing values show as ``–``."""
    rows = [[_cell(row, kind, col) for kind, col in view.values()] for row in df.iter_rows(named=True)]
    return list(view), rows


def to_markdown(df: pl.DataFrame, view: View, footnote: str | None = None) -> str:
    """A Markdown table of ``df`` through ``view`` (:func:`cells`), then ``footnote`` (a paragraph)."""
    headers, rows = cells(df, view)
    lines = ["| " + " | ".join(map(_escape_pipes, headers)) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(map(_escape_pipes, row)) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    return text + ("\n" + footnote.strip() + "\n" if footnote else "")


def _escape_pipes(text: str) -> str:
    """A literal ``|`` inside a Markdown table cell is written ``\\|`` (e.g. ``mean \\|Δσ\\|/σ``)."""
    return text.replace("|", "\\|")


def write_table(
    df: pl.DataFrame, csv: str | os.PathLike, md: str | os.PathLike, markdown_columns: dict, footnote: str | None = None
) -> None:
    """CSV with every column (full precision) and a Markdown view (with ``footnote``); both atomic."""
    Path(csv).parent.mkdir(parents=True, exist_ok=True)
    write_text(df.write_csv(), csv)
    write_text(to_markdown(df, markdown_columns, footnote), md)


def write_csv(df: pl.DataFrame, csv: str | os.PathLike) -> None:
    """A CSV of every column, atomically."""
    Path(csv).parent.mkdir(parents=True, exist_ok=True)
    write_text(df.write_csv(), csv)


REPORT_TABLE_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1rem; color: #1f2937; }
h1 { font-size: 1.1rem; margin: 0 0 .3rem 0; }
p.caption { margin: 0 0 .8rem 0; color: #4b5563; font-size: .9rem; }
table { border-collapse: collapse; font-size: .85rem; }
th, td { border: 1px solid #d1d5db; padding: .25rem .6rem; white-space: nowrap; }
th { background: #f3f4f6; text-align: left; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #f9fafb; }
"""


def report_page(df: pl.DataFrame, view: View, title: str, caption: str = "", footnote: str | None = None) -> str:
    """A self-contained HTML page (no scripts, no external resources) showing ``df`` through
    ``view``, as its Markdown file does: what the Snakemake report displays for a result table."""
    headers, rows = cells(df, view)
    numeric = re.compile(r"^[–\-+0-9.,\[\] e]+$")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "\n".join(
        "<tr>"
        + "".join(
            f'<td class="num">{html.escape(c)}</td>' if numeric.match(c) else f"<td>{html.escape(c)}</td>" for c in row
        )
        + "</tr>"
        for row in rows
    )
    cap = f'<p class="caption">{html.escape(caption)}</p>' if caption else ""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{REPORT_TABLE_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{cap}\n<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>\n"
        + (f'<p class="caption">{html.escape(footnote.strip())}</p>\n' if footnote else "")
        + "</body>\n</html>\n"
    )


def read_table(path: str | os.PathLike) -> pl.DataFrame:
    """A table CSV written by :func:`write_table`; columns that are empty throughout (e.g. no
    recovery % defined) are read as Float64, not String. Errors name the file."""
    try:
        df = pl.read_csv(path, infer_schema_length=None)
    except Exception as err:
        raise ValueError(f"{path}: cannot read the table: {err}") from err
    empty = [c for c, t in df.schema.items() if t == pl.String and df[c].null_count() == df.height]
    return df.with_columns(pl.col(empty).cast(pl.Float64)) if empty else df
