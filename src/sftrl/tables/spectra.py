"""The spectral tables: mean |Δσ|/σ and principal angles by matrix type and band per compared pair
(``tables/spectrum``), and the per-index profiles the plots draw (``tables/spectrum-profile.csv``);
docs/study.md §7."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import polars as pl

from sftrl.constants import BANDS, MATRIX_TYPES
from sftrl.study import RL_ALGORITHMS


def split_pair(path: str | os.PathLike, suffix: str) -> tuple[str, str]:
    """``spectrum/<a>--<b><suffix>`` → (a, b); a clear error naming the file otherwise."""
    name = Path(path).name
    a, sep, b = name.removesuffix(suffix).partition("--")
    if not name.endswith(suffix) or not sep or not a or not b:
        raise ValueError(f"{path}: expected a spectrum file named <a>--<b>{suffix}")
    return a, b


def _any_step(model: str) -> int:
    m = re.search(r"-(\d+)$", model)
    return int(m.group(1)) if m else 0


def pair_sort_key(a: str, b: str) -> tuple:
    """Order of compared pairs: base → SFT, then SFT → SFT, then SFT → RL, then anything else,
    each by the steps of a and b (numerically)."""
    kind_a, kind_b = a.split("-")[0], b.split("-")[0]
    kind_b = "rl" if kind_b in RL_ALGORITHMS else kind_b
    kind = {("base", "sft"): 0, ("sft", "sft"): 1, ("sft", "rl"): 2}.get((kind_a, kind_b), 3)
    return (kind, _any_step(a), _any_step(b), a, b)


def spectrum_summary(paths: list[str | os.PathLike]) -> pl.DataFrame:
    """Mean |Δσ|/σ and mean principal angle (U and V) by matrix type and band, per compared pair.

    ``paths`` are ``spectrum/<a>--<b>.parquet`` files, in any order; rows are sorted by pair
    (`pair_sort_key`: base → SFT, SFT → SFT, SFT → RL, each by step), then matrix type (q, k, v,
    o, gate, up, down) and band (head, bulk, tail).
    """
    frames = []
    named = sorted(((split_pair(path, ".parquet"), path) for path in paths), key=lambda t: pair_sort_key(*t[0]))
    for i, ((a, b), path) in enumerate(named):
        frames.append(
            pl.read_parquet(path).with_columns(
                pl.lit(i).alias("pair_order"), pl.lit(a).alias("a"), pl.lit(b).alias("b")
            )
        )
    df = pl.concat(frames, how="diagonal_relaxed")
    type_order = {t: j for j, t in enumerate(MATRIX_TYPES)}
    band_order = {t: j for j, t in enumerate(BANDS)}
    out = (
        df.group_by("pair_order", "a", "b", "type", "band")
        .agg(
            pl.len().alias("matrices"),
            pl.col("mean_rel_dsigma").mean(),
            pl.col("mean_angle_u").mean(),
            pl.col("mean_angle_v").mean(),
        )
        .with_columns(
            pl.col("type").replace_strict(type_order, default=len(type_order), return_dtype=pl.Int64).alias("_t"),
            pl.col("band").replace_strict(band_order, return_dtype=pl.Int64).alias("_b"),
        )
        .sort("pair_order", "_t", "type", "_b")
        .drop("pair_order", "_t", "_b")
    )
    return out


SPECTRUM_MARKDOWN = {
    "pair": ("arrow", ("a", "b")),
    "type": ("raw", "type"),
    "band": ("raw", "band"),
    "matrices": ("raw", "matrices"),
    "mean |Δσ|/σ": ("sci", "mean_rel_dsigma"),
    "mean angle U (°)": ("raw1", "mean_angle_u"),
    "mean angle V (°)": ("raw1", "mean_angle_v"),
}


INDEX_COLUMNS = ("matrix", "type", "index", "band", "rel_dsigma", "angle_u", "angle_v")


def spectrum_profile(paths: Iterable[str | os.PathLike], max_points: int = 128) -> pl.DataFrame:
    """Per-index spectra averaged over layers: one row per pair × matrix type × index bin.

    ``paths`` are ``spectrum/<a>--<b>.index.parquet`` files (`sftrl.spectrum.compare`'s per-index
    table). For every pair and matrix type, the matrices of all layers are averaged index by index:
    mean |Δσ|/σ (``abs_rel_dsigma``) and mean principal angles (``angle_u``, ``angle_v``; null past
    the top-k). Spectra longer than ``max_points`` are averaged over ``max_points`` equal bins of
    consecutive indices, so plots stay small at paper scale. ``rel_start``/``rel_stop``/``rel_index``
    place a bin as a fraction of the spectrum (0 = largest σ); ``band`` is the band of its first
    index. Rows: pairs by `pair_sort_key`, then matrix type, then index.
    """
    if max_points < 1:
        raise ValueError(f"max_points must be at least 1, got {max_points}")
    named = sorted(((split_pair(p, ".index.parquet"), p) for p in paths), key=lambda t: pair_sort_key(*t[0]))
    if not named:
        raise ValueError("spectrum_profile needs at least one spectrum/<a>--<b>.index.parquet file")
    frames = []
    for order, ((a, b), path) in enumerate(named):
        df = pl.read_parquet(path)
        missing = [c for c in INDEX_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"{path}: missing columns {missing} (expected a per-index spectrum table)")
        n = pl.len().over("matrix")
        bins = pl.min_horizontal(n, pl.lit(max_points))
        df = df.with_columns(
            n.alias("n"),
            (pl.col("index").cast(pl.Int64) * bins // n).alias("bin"),
            (pl.col("index").cast(pl.Float64) / n).alias("_rel0"),
            ((pl.col("index").cast(pl.Float64) + 1) / n).alias("_rel1"),
        )
        agg = (
            df.sort("matrix", "index")
            .group_by("type", "bin")
            .agg(
                pl.col("matrix").n_unique().alias("matrices"),
                pl.col("n").max(),
                pl.col("index").min().alias("index_start"),
                (pl.col("index").max() + 1).alias("index_stop"),
                pl.col("_rel0").min().alias("rel_start"),
                pl.col("_rel1").max().alias("rel_stop"),
                pl.col("band").first(),
                pl.col("rel_dsigma").abs().mean().alias("abs_rel_dsigma"),
                pl.col("angle_u").mean(),
                pl.col("angle_v").mean(),
            )
            .with_columns(
                pl.lit(order).alias("_pair"),
                pl.lit(a).alias("a"),
                pl.lit(b).alias("b"),
                pl.lit(f"{a} → {b}").alias("pair"),
                ((pl.col("rel_start") + pl.col("rel_stop")) / 2).alias("rel_index"),
            )
        )
        frames.append(agg)
    type_order = {t: j for j, t in enumerate(MATRIX_TYPES)}
    out = pl.concat(frames).with_columns(
        pl.col("type").replace_strict(type_order, default=len(type_order), return_dtype=pl.Int64).alias("_t")
    )
    out = out.sort("_pair", "_t", "type", "bin").with_columns(
        pl.col("index_start", "index_stop", "n", "matrices").cast(pl.Int64),
        pl.col(pl.Float64).fill_nan(None),
    )
    return out.select(
        "a",
        "b",
        "pair",
        "type",
        "bin",
        "index_start",
        "index_stop",
        "n",
        "rel_start",
        "rel_stop",
        "rel_index",
        "band",
        "matrices",
        "abs_rel_dsigma",
        "angle_u",
        "angle_v",
    )
