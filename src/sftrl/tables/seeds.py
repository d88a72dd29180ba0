"""Tables across seeds: each replicate's table (``seed-<n>/tables/<name>.csv``) combined into the
study's table (``tables/<name>.csv``) and a seed-level table (``tables/<name>.seeds.csv``).

A row of the study's table is a row that the replicates share: the same values in the table's key
columns (:attr:`sftrl.study.Result.keys`: e.g. a model name and step, or an edit's method, band and
target; an edit's donor, the peak-OOD checkpoint, may differ between seeds and is not a key).
Numbers are the mean over the seeds that have a value; text that lists numbers the same way in
every seed (the shares solved on turn 1, 2, ...: ``"9.4 / 1.7 / 1.7"``) is averaged number by
number; other text that differs between seeds is joined with `` / `` in seed order (``sft-10 /
sft-25``); a yes/no column is yes only when every seed says yes. The measured columns -- every
accuracy with a 95% interval (``<p>accuracy`` beside ``<p>ci_low``, ``<p>ci_high``) and the table's
:attr:`~sftrl.study.Result.measures` (recovery %, changes, spectral means) -- get:

* the 95% **t-interval over seeds**: mean ± t(0.975, n − 1) · sd / √n of the n seeds' values. For
  an accuracy it replaces the per-hand interval in ``<p>ci_low``/``<p>ci_high`` (so plots and views
  show the across-seed interval); for a measure it is ``<m>_ci_low``/``<m>_ci_high``. The
  per-hand intervals of every replicate stay in the seed-level table. The interval is over
  replicates of training with the evaluation hands held fixed: it says how much the result
  depends on the training seed, not how it would change on other hands.
* ``<col>_sd`` (the seeds' standard deviation), ``<col>_n`` (how many seeds have a value) and
  ``<col>_by_seed`` (every seed's value in seed order, ``–`` where missing).

``seeds`` counts the replicates that have the row. With one seed the study's table is that seed's
table, unchanged.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import polars as pl

from sftrl.tables.render import View, read_table

# t(0.975, df) for df = 1..30; past 30 the normal quantile 1.96 is within 2% of it.
T975 = (
    *(12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131),
    *(2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042),
)


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (two-sided 95%)."""
    if df < 1:
        raise ValueError(f"t975 needs at least 1 degree of freedom, got {df}")
    return T975[df - 1] if df <= len(T975) else 1.96


def t_interval(values: list[float | None]) -> dict:
    """mean, sd, n and the 95% t-interval of the non-missing ``values`` (bounds None below 2)."""
    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    n = len(xs)
    if n == 0:
        return {"mean": None, "sd": None, "n": 0, "low": None, "high": None}
    mean = sum(xs) / n
    if n < 2:
        return {"mean": mean, "sd": None, "n": 1, "low": None, "high": None}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "n": n, "low": mean - half, "high": mean + half}


def interval_columns(col: str) -> tuple[str, str]:
    """The interval columns of a measured column: ``<p>ci_low``/``<p>ci_high`` for ``<p>accuracy``,
    else ``<col>_ci_low``/``<col>_ci_high``."""
    if col.endswith("accuracy"):
        prefix = col[: -len("accuracy")]
        return f"{prefix}ci_low", f"{prefix}ci_high"
    return f"{col}_ci_low", f"{col}_ci_high"


def measured_columns(df: pl.DataFrame, measures=()) -> list[str]:
    """Every accuracy with its interval columns in ``df``, then the ``measures`` it has."""
    acc = [c for c in df.columns if c.endswith("accuracy") and all(x in df.columns for x in interval_columns(c))]
    return acc + [m for m in measures if m in df.columns and m not in acc]


def _text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return repr(float(value))


def _mean_of_number_lists(texts: list[str]) -> str | None:
    """The element-wise mean of texts that each list the same count of numbers joined by `` / ``,
    at the most decimals any of them shows; None when they are not all such lists."""
    try:
        lists = [[float(x) for x in t.split(" / ")] for t in texts]
    except ValueError:
        return None
    if len({len(xs) for xs in lists}) != 1:
        return None
    decimals = max(len(x.partition(".")[2]) for t in texts for x in t.split(" / "))
    return " / ".join(f"{sum(col) / len(col):.{decimals}f}" for col in zip(*lists, strict=True))


def combine_seeds(tables: Mapping[int, pl.DataFrame], keys, measures=()) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(the study's table, the seed-level table) of each seed's table (``{seed: frame}``, the same
    columns), as the module docstring says. Rows in the order of the tables: by their mean
    position in the seeds that have them."""
    if not tables:
        raise ValueError("combine_seeds needs the table of at least one seed")
    seeds = sorted(tables)
    frames = []
    for seed in seeds:
        df = tables[seed]
        missing = [k for k in keys if k not in df.columns]
        if missing:
            raise ValueError(f"the table of seed {seed} has no key columns {missing}; got {df.columns}")
        frames.append(df.with_columns(pl.lit(seed, dtype=pl.Int64).alias("seed"), pl.int_range(pl.len()).alias("_row")))
    long = pl.concat(frames, how="diagonal_relaxed")
    by_seed = long.sort("_row", "seed").drop("_row").select("seed", pl.exclude("seed"))
    if len(seeds) == 1:
        return tables[seeds[0]], by_seed
    columns = [c for c in tables[seeds[0]].columns]
    measured = measured_columns(tables[seeds[0]], measures)
    intervals = {c: interval_columns(c) for c in measured}
    interval_of = {x for pair in intervals.values() for x in pair if x in columns}
    groups: dict[tuple, list[dict]] = {}
    for row in long.sort("seed", "_row").iter_rows(named=True):
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for key, rows in groups.items():
        row = dict(zip(keys, key, strict=True))
        row["_row"] = sum(r["_row"] for r in rows) / len(rows)
        row["seeds"] = len(rows)
        for col in columns:
            if col in keys or col in interval_of:
                continue
            values = [r[col] for r in rows]
            dtype = long.schema[col]
            if col in intervals:
                stats = t_interval(values)
                lo, hi = intervals[col]
                row |= {col: stats["mean"], lo: stats["low"], hi: stats["high"], f"{col}_sd": stats["sd"]}
                row |= {f"{col}_n": stats["n"], f"{col}_by_seed": " / ".join(map(_text, values))}
            elif dtype == pl.Boolean:
                present = [v for v in values if v is not None]
                row[col] = all(present) if present else None
            elif dtype.is_numeric():
                row[col] = t_interval(values)["mean"]
            else:
                texts = [str(v) for v in values if v is not None]
                distinct = list(dict.fromkeys(texts))
                averaged = _mean_of_number_lists(texts) if len(distinct) > 1 else None
                row[col] = averaged or (" / ".join(distinct) if distinct else None)
        out.append(row)
    order = [*columns]
    for col in measured:
        lo, hi = intervals[col]
        order += [c for c in (lo, hi) if c not in order]
        order += [f"{col}_sd", f"{col}_n", f"{col}_by_seed"]
    order.append("seeds")
    schema = {}
    for col in order:
        if col.endswith("_by_seed"):
            schema[col] = pl.String
        elif col in ("seeds",) or col.endswith("_n") and col[:-2] in intervals:
            schema[col] = pl.Int64
        elif col in keys or long.schema.get(col) in (pl.String, pl.Boolean):
            schema[col] = long.schema[col]
        else:
            schema[col] = pl.Float64
    df = pl.DataFrame(sorted(out, key=lambda r: r["_row"]), schema={**schema, "_row": pl.Float64})
    return df.drop("_row").select(order), by_seed


def is_combined(df: pl.DataFrame) -> bool:
    """Whether ``df`` is a study table combined from several seeds (it has a ``seeds`` column)."""
    return "seeds" in df.columns


_INTERVAL_KINDS = {"pct": "ci", "dpct": "ci_dpct", "raw1": "ci_raw1", "sci": "ci_sci"}


def seeds_view(view: View, df: pl.DataFrame, measures=()) -> View:
    """The view of a table combined from several seeds: every measured value with its interval
    over seeds (``41.0 [34.9, 47.4]``), followed by a column of each seed's value, and the number
    of seeds last. ``view`` is the single-seed view; headers say "mean" and "over seeds"."""
    if not is_combined(df):
        return view
    measured = set(measured_columns(df, measures))
    out: View = {}
    for header, (kind, col) in view.items():
        value = col[0] if kind == "ci" else col
        if kind == "ci" and value in measured:
            name = header.replace(" [95% CI]", "")
            out[f"{name} mean [95% CI over seeds]"] = (kind, col)
            out[f"{name} per seed"] = ("by_seed:pct", f"{value}_by_seed")
        elif kind in _INTERVAL_KINDS and isinstance(col, str) and col in measured:
            lo, hi = interval_columns(col)
            out[f"{header} mean [95% CI over seeds]"] = (_INTERVAL_KINDS[kind], (col, lo, hi))
            out[f"{header} per seed"] = (f"by_seed:{kind}", f"{col}_by_seed")
        else:
            out[header] = (kind, col)
    out["seeds"] = ("raw", "seeds")
    return out


SEEDS_FOOTNOTE = (
    "Over seeds: each training seed is an independent replicate (the evaluation hands are the same "
    "for all). Values are means over the seeds that have them; [low, high] is the 95% t-interval "
    "over seeds, mean ± t(0.975, n − 1)·sd/√n (the per-hand intervals of each replicate are in the "
    "seed-level table, <name>.seeds.csv); per seed lists every seed's value in seed order. Text that "
    "differs between seeds is joined with /; seeds = replicates with this row."
)


def read_seed_tables(paths: Mapping[int, str | os.PathLike]) -> dict[int, pl.DataFrame]:
    """``{seed: path}`` of per-seed table CSVs, read (:func:`sftrl.tables.render.read_table`)."""
    return {int(seed): read_table(path) for seed, path in paths.items()}
