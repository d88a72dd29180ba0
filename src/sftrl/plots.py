"""Charts of the study (altair): each function takes the tidy polars frame(s) that `sftrl.tables`
produces (or the CSVs it writes, read back with ``pl.read_csv``) and returns an ``alt.Chart``
(layered or faceted). Accuracies are shown in percent with their 95% intervals as error bars.

`save_chart` writes a chart as standalone HTML (Vega, Vega-Lite and Vega-Embed inlined: it opens
offline), PNG and SVG, each atomically. Data is embedded as inline values in a fixed row order,
so the same tables give the same files.

| name | function | data |
|---|---|---|
| sft-trajectory | `sft_trajectory` | tables/sft-trajectory.csv (+ rl-recovery.csv: PPO marks) |
| rl-recovery | `rl_recovery` | tables/rl-recovery.csv |
| stages | `stages` | tables/stages.csv |
| sigma-change | `sigma_change` | tables/spectrum-profile.csv |
| principal-angles | `principal_angles` | tables/spectrum-profile.csv (+ spectrum.csv: band means) |
| uv-merge | `uv_merge` | tables/uv-merge.csv |
| layer-reset | `layer_reset` | tables/layer-reset.csv |
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import altair as alt
import polars as pl

from sftrl.atomic import atomic_path
from sftrl.constants import INTERVAL

SPLIT_LABELS = {"id": "ID", "ood": "OOD"}


def _interval_columns(prefix: str = "") -> list[str]:
    """``<prefix><split>_accuracy``, ``_ci_low``, ``_ci_high`` of both splits."""
    return [f"{prefix}{s}_{c}" for s in SPLIT_LABELS for c in INTERVAL]


SPLIT_COLORS = alt.Scale(domain=["ID", "OOD"], range=["#1f77b4", "#d62728"])
BAND_COLORS = alt.Scale(domain=["head", "bulk", "tail"], range=["#fdd49e", "#f0f0f0", "#c6dbef"])
MATRIX_TYPES = ("q", "k", "v", "o", "gate", "up", "down")
WIDTH, HEIGHT = 420, 260
FACET_WIDTH, FACET_HEIGHT = 220, 150


def _require(df: pl.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing columns {missing}; got {df.columns}")


def _values(df: pl.DataFrame) -> alt.InlineData:
    """Inline data values (JSON-safe: NaN → null), in the frame's row order."""
    df = df.with_columns(pl.col(pl.Float64, pl.Float32).fill_nan(None))
    return alt.InlineData(values=df.to_dicts())


def _pct(df: pl.DataFrame, columns: Iterable[str]) -> pl.DataFrame:
    return df.with_columns(*[(pl.col(c) * 100).alias(c) for c in columns])


def _accuracy_long(df: pl.DataFrame, prefix: str = "") -> pl.DataFrame:
    """Wide ``<prefix><split>_{accuracy,ci_low,ci_high}`` columns → rows per split (in percent)."""
    parts = []
    for split, label in SPLIT_LABELS.items():
        cols = {f"{prefix}{split}_{c}": c for c in INTERVAL}
        parts.append(
            df.rename(cols)
            .with_columns(pl.lit(label).alias("split"))
            .drop(
                [
                    c
                    for sp in SPLIT_LABELS
                    if sp != split
                    for c in (f"{prefix}{sp}_accuracy", f"{prefix}{sp}_ci_low", f"{prefix}{sp}_ci_high")
                ]
            )
        )
    return _pct(pl.concat(parts, how="diagonal_relaxed"), list(INTERVAL))


def _y_acc(title: str = "accuracy (%)") -> alt.Y:
    return alt.Y("accuracy:Q", title=title, scale=alt.Scale(zero=True))


def _y_ci(title: str = "accuracy (%)") -> dict:
    """The y/y2 encoding of an error bar over the 95% interval."""
    return {"y": alt.Y("ci_low:Q", title=title), "y2": "ci_high:Q"}


def _acc_tooltip(*extra: alt.Tooltip) -> list:
    return [
        *extra,
        alt.Tooltip("split:N"),
        alt.Tooltip("accuracy:Q", title="accuracy %", format=".1f"),
        alt.Tooltip("ci_low:Q", title="95% CI low", format=".1f"),
        alt.Tooltip("ci_high:Q", title="95% CI high", format=".1f"),
    ]


# --- a. SFT trajectory ------------------------------------------------------------------------


def _seed_count(by_seed: pl.DataFrame | None) -> int:
    """Replicates in a seed-level table (``<name>.seeds.csv``); 0 without one."""
    return 0 if by_seed is None or "seed" not in by_seed.columns else by_seed["seed"].n_unique()


def _seed_lines(long: pl.DataFrame, y: alt.Y, color: alt.Color) -> alt.Chart:
    """Each replicate's line, faint (``long``: step, accuracy, seed and the colour's field)."""
    return (
        alt.Chart(_values(long))
        .mark_line(opacity=0.3, strokeWidth=1)
        .encode(x=alt.X("step:Q"), y=y, color=color, detail="seed:N")
    )


def _seeds_title(title: str, n: int) -> str:
    return f"{title}; mean of {n} seeds, 95% interval over seeds, faint: each seed" if n > 1 else title


def sft_trajectory(
    trajectory: pl.DataFrame, rl: pl.DataFrame | None = None, by_seed: pl.DataFrame | None = None
) -> alt.LayerChart:
    """ID and OOD accuracy vs SFT step (base = step 0) with 95% intervals; PPO results (from the
    rl-recovery table) as separate triangle marks at the SFT step they started from. With a
    seed-level table of several seeds (``by_seed``), the tables hold means and intervals over
    seeds, and each seed's trajectory is drawn faintly behind them."""
    _require(
        trajectory,
        ["model", "step", *_interval_columns()],
        "sft_trajectory",
    )
    sft = _accuracy_long(trajectory.select("model", "step", *_interval_columns()))
    sft = sft.with_columns(pl.lit("SFT checkpoint").alias("stage"))
    frames = [sft]
    if rl is not None and not rl.is_empty():
        _require(rl, ["step", "rl_model", *_interval_columns("rl_")], "sft_trajectory (rl)")
        ppo = rl.select("step", *_interval_columns("rl_"))
        names = rl.select("step", pl.col("rl_model").alias("model"))
        ppo = _accuracy_long(ppo, prefix="rl_").join(names, on="step", how="left")
        ppo = ppo.with_columns(pl.lit("RL from this step").alias("stage"))
        frames.append(ppo.select(sft.columns))
    long = pl.concat(frames).sort("stage", "split", "step", descending=[True, False, False])
    x = alt.X("step:Q", title="SFT step (0 = base model)")
    color = alt.Color("split:N", title="split", scale=SPLIT_COLORS)
    shape = alt.Shape(
        "stage:N",
        title="model",
        scale=alt.Scale(domain=["SFT checkpoint", "RL from this step"], range=["circle", "triangle-up"]),
    )
    tooltip = _acc_tooltip(alt.Tooltip("model:N"), alt.Tooltip("step:Q"))
    base = alt.Chart().encode(x=x, color=color)
    is_sft = alt.datum.stage == "SFT checkpoint"
    layers = [
        base.mark_line().encode(y=_y_acc()).transform_filter(is_sft),
        base.mark_errorbar(ticks=True).encode(**_y_ci()),
        base.mark_point(filled=True, size=70).encode(y=_y_acc(), shape=shape, tooltip=tooltip),
    ]
    n = _seed_count(by_seed)
    if n > 1:
        _require(by_seed, ["seed", "step", *_interval_columns()], "sft_trajectory (by seed)")
        each = _accuracy_long(by_seed.select("seed", "step", *_interval_columns()))
        layers.insert(0, _seed_lines(each.sort("seed", "split", "step"), _y_acc(), color))
    title = _seeds_title("ID and OOD accuracy along SFT (PPO results at their starting step)", n)
    return alt.layer(*layers, data=_values(long)).properties(title=title, width=WIDTH, height=HEIGHT)


# --- b. RL recovery window --------------------------------------------------------------------


def rl_recovery(rl: pl.DataFrame, by_seed: pl.DataFrame | None = None) -> alt.LayerChart:
    """OOD accuracy after PPO vs the SFT checkpoint it started from (the recovery window), beside
    the OOD accuracy of that checkpoint, with the SFT peak OOD as a dashed horizontal rule. With a
    seed-level table of several seeds (``by_seed``), each seed's two lines are drawn faintly behind
    the means."""
    _require(
        rl,
        [
            "step",
            "peak_sft_ood",
            "recovery_pct",
            *[f"{k}_ood_{c}" for k in ("sft", "rl") for c in INTERVAL],
        ],
        "rl_recovery",
    )
    parts = []
    for kind, label in (("sft", "SFT checkpoint"), ("rl", "after PPO")):
        part = rl.select(
            "step",
            "recovery_pct",
            pl.col(f"{kind}_ood_accuracy").alias("accuracy"),
            pl.col(f"{kind}_ood_ci_low").alias("ci_low"),
            pl.col(f"{kind}_ood_ci_high").alias("ci_high"),
        ).with_columns(pl.lit(label).alias("series"), pl.lit("OOD").alias("split"))
        parts.append(part)
    long = _pct(pl.concat(parts), list(INTERVAL)).sort("series", "step")
    peak = 100 * rl["peak_sft_ood"].max()
    long = long.with_columns(pl.lit(peak).alias("peak"))
    x = alt.X("step:Q", title="SFT checkpoint PPO started from (step)")
    color = alt.Color(
        "series:N",
        title="OOD accuracy of",
        scale=alt.Scale(domain=["SFT checkpoint", "after PPO"], range=["#2ca02c", "#ff7f0e"]),
    )
    base = alt.Chart().encode(x=x, color=color)
    tooltip = _acc_tooltip(
        alt.Tooltip("series:N"), alt.Tooltip("step:Q"), alt.Tooltip("recovery_pct:Q", title="recovery %", format=".1f")
    )
    rule = alt.Chart().mark_rule(strokeDash=[6, 4], color="black").encode(y=alt.Y("mean(peak):Q"))
    label = (
        alt.Chart()
        .mark_text(align="left", dx=4, dy=-6, fontSize=11)
        .encode(x=alt.value(0), y=alt.Y("mean(peak):Q"), text=alt.value(f"SFT peak OOD {peak:.1f}%"))
    )
    layers = [
        base.mark_line().encode(y=_y_acc("OOD accuracy (%)")),
        base.mark_errorbar(ticks=True).encode(**_y_ci("OOD accuracy (%)")),
        base.mark_point(filled=True, size=70).encode(y=_y_acc("OOD accuracy (%)"), tooltip=tooltip),
        rule,
        label,
    ]
    n = _seed_count(by_seed)
    if n > 1:
        _require(by_seed, ["seed", "step", "sft_ood_accuracy", "rl_ood_accuracy"], "rl_recovery (by seed)")
        each = pl.concat(
            by_seed.select("seed", "step", (100 * pl.col(f"{kind}_ood_accuracy")).alias("accuracy")).with_columns(
                pl.lit(label).alias("series")
            )
            for kind, label in (("sft", "SFT checkpoint"), ("rl", "after PPO"))
        )
        layers.insert(0, _seed_lines(each.sort("seed", "series", "step"), _y_acc("OOD accuracy (%)"), color))
    title = _seeds_title("OOD after PPO vs starting SFT checkpoint (dashed: SFT peak OOD)", n)
    return alt.layer(*layers, data=_values(long)).properties(title=title, width=WIDTH, height=HEIGHT)


# --- stage table as bars ----------------------------------------------------------------------


def stages(stage_table: pl.DataFrame) -> alt.LayerChart:
    """Premax / Moderate / RL × ID / OOD accuracy as grouped bars with 95% intervals."""
    _require(
        stage_table,
        ["stage", "model", *_interval_columns()],
        "stages",
    )
    long = _accuracy_long(stage_table.select("stage", "model", *_interval_columns()))
    order = {s: i for i, s in enumerate(stage_table["stage"].to_list())}
    long = (
        long.with_columns(pl.col("stage").replace_strict(order, return_dtype=pl.Int64).alias("_o"))
        .sort("split", "_o")
        .drop("_o")
    )
    long = long.with_columns(pl.format("{} ({})", pl.col("stage"), pl.col("model")).alias("label"))
    labels = [f"{s} ({m})" for s, m in zip(stage_table["stage"], stage_table["model"], strict=True)]
    x = alt.X("label:N", title=None, sort=labels, axis=alt.Axis(labelAngle=0))
    base = alt.Chart().encode(
        x=x, xOffset=alt.XOffset("split:N", sort=["ID", "OOD"]), color=alt.Color("split:N", scale=SPLIT_COLORS)
    )
    layers = [
        base.mark_bar().encode(y=_y_acc(), tooltip=_acc_tooltip(alt.Tooltip("stage:N"), alt.Tooltip("model:N"))),
        base.mark_errorbar(thickness=2).encode(**_y_ci(), color=alt.value("black")),
    ]
    return alt.layer(*layers, data=_values(long)).properties(
        title="Stage table: Premax, Moderate, RL", width=WIDTH, height=HEIGHT
    )


# --- c/d. spectra by singular index -----------------------------------------------------------


def _band_layer() -> alt.Chart:
    """Shaded head / bulk / tail bands, from the profile rows' band extents (rel_start..rel_stop)."""
    return (
        alt.Chart()
        .transform_filter(alt.datum.row == "index")
        .transform_aggregate(start="min(rel_start)", stop="max(rel_stop)", groupby=["band"])
        .mark_rect(opacity=0.55)
        .encode(
            x=alt.X("start:Q"),
            x2="stop:Q",
            fill=alt.Fill("band:N", scale=BAND_COLORS, title="spectrum band", sort=["head", "bulk", "tail"]),
        )
    )


def _facet_types(chart: alt.LayerChart, df: pl.DataFrame, title) -> alt.FacetChart:
    types = [t for t in MATRIX_TYPES if t in set(df["type"].to_list())] + sorted(
        set(df["type"].to_list()) - set(MATRIX_TYPES)
    )
    return (
        chart.properties(width=FACET_WIDTH, height=FACET_HEIGHT)
        .facet(facet=alt.Facet("type:N", title="matrix type", sort=types), columns=4)
        .properties(title=title)
    )


def _pair_color(df: pl.DataFrame) -> alt.Color:
    pairs = df.filter(pl.col("row") == "index")["pair"].unique(maintain_order=True).to_list()
    return alt.Color("pair:N", title="reference → compared", sort=pairs, scale=alt.Scale(domain=pairs, scheme="dark2"))


PROFILE_COLUMNS = ("pair", "type", "band", "rel_start", "rel_stop", "rel_index", "index_start", "index_stop")


def sigma_change(profile: pl.DataFrame) -> alt.FacetChart:
    """Mean relative singular-value change |Δσ|/σ (over layers) by singular index, one panel per
    matrix type, a line per compared pair; head / bulk / tail bands shaded. Log scale."""
    _require(profile, [*PROFILE_COLUMNS, "abs_rel_dsigma"], "sigma_change")
    df = profile.select(*PROFILE_COLUMNS, "abs_rel_dsigma").with_columns(pl.lit("index").alias("row"))
    df = df.with_columns(pl.when(pl.col("abs_rel_dsigma") > 0).then(pl.col("abs_rel_dsigma")).alias("abs_rel_dsigma"))
    line = (
        alt.Chart()
        .transform_filter("isValid(datum.abs_rel_dsigma)")
        .mark_line(strokeWidth=1.2)
        .encode(
            x=alt.X("rel_index:Q", title="singular index / n", scale=alt.Scale(domain=[0, 1])),
            y=alt.Y("abs_rel_dsigma:Q", title="mean |Δσ|/σ", scale=alt.Scale(type="log")),
            color=_pair_color(df),
            tooltip=[
                alt.Tooltip("pair:N"),
                alt.Tooltip("type:N"),
                alt.Tooltip("index_start:Q", title="index"),
                alt.Tooltip("band:N"),
                alt.Tooltip("abs_rel_dsigma:Q", title="|Δσ|/σ", format=".2e"),
            ],
        )
    )
    chart = alt.layer(_band_layer(), line, data=_values(df))
    title = alt.Title(
        "Relative singular-value change by index (mean over layers)", subtitle="index 0 = largest σ; log scale"
    )
    return _facet_types(chart, df, title)


def principal_angles(profile: pl.DataFrame, summary: pl.DataFrame | None = None) -> alt.FacetChart:
    """Principal angles (degrees, U solid and V dashed, mean over layers) of the top-k singular
    subspaces by index, one panel per matrix type and a colour per pair, over the shaded head /
    bulk / tail bands; with the spectrum table (``summary``), each band's mean angle (between the
    bands' singular subspaces) as a horizontal segment spanning the band."""
    _require(profile, [*PROFILE_COLUMNS, "angle_u", "angle_v"], "principal_angles")
    idx = profile.select(*PROFILE_COLUMNS, "angle_u", "angle_v")
    rows = []
    for col, sub in (("angle_u", "U"), ("angle_v", "V")):
        rows.append(
            idx.rename({col: "angle"})
            .drop("angle_v" if col == "angle_u" else "angle_u")
            .with_columns(pl.lit(sub).alias("subspace"), pl.lit("index").alias("row"))
        )
    df = pl.concat(rows)
    if summary is not None:
        _require(summary, ["a", "b", "type", "band", "mean_angle_u", "mean_angle_v"], "principal_angles (summary)")
        extent = profile.group_by("pair", "type", "band").agg(pl.col("rel_start").min(), pl.col("rel_stop").max())
        bands = summary.with_columns(pl.format("{} → {}", pl.col("a"), pl.col("b")).alias("pair")).join(
            extent, on=["pair", "type", "band"], how="inner"
        )
        for col, sub in (("mean_angle_u", "U"), ("mean_angle_v", "V")):
            rows.append(
                bands.select("pair", "type", "band", "rel_start", "rel_stop", pl.col(col).alias("angle")).with_columns(
                    pl.lit(sub).alias("subspace"), pl.lit("band").alias("row")
                )
            )
        df = pl.concat(rows, how="diagonal_relaxed")
    df = df.sort("row", "pair", "type", "subspace", "rel_start", descending=[True, False, False, False, False])
    x = alt.X("rel_index:Q", title="index / n", scale=alt.Scale(domain=[0, 1]))
    dash = alt.StrokeDash(
        "subspace:N", title="singular vectors", scale=alt.Scale(domain=["U", "V"], range=[[1, 0], [4, 3]])
    )
    color = _pair_color(df)
    curve = (
        alt.Chart()
        .transform_filter("datum.row == 'index' && isValid(datum.angle)")
        .mark_line(strokeWidth=1.2)
        .encode(
            x=x,
            y=alt.Y("angle:Q", title="principal angle (°)"),
            color=color,
            strokeDash=dash,
            detail="subspace:N",
            tooltip=[
                alt.Tooltip("pair:N"),
                alt.Tooltip("type:N"),
                alt.Tooltip("subspace:N"),
                alt.Tooltip("index_start:Q", title="angle index"),
                alt.Tooltip("angle:Q", title="angle °", format=".2f"),
            ],
        )
    )
    layers = [_band_layer(), curve]
    if summary is not None:
        layers.append(
            alt.Chart()
            .transform_filter(alt.datum.row == "band")
            .mark_rule(strokeWidth=2.5)
            .encode(
                x=alt.X("rel_start:Q"),
                x2="rel_stop:Q",
                y=alt.Y("angle:Q"),
                color=color,
                strokeDash=dash,
                tooltip=[
                    alt.Tooltip("pair:N"),
                    alt.Tooltip("type:N"),
                    alt.Tooltip("band:N"),
                    alt.Tooltip("subspace:N"),
                    alt.Tooltip("angle:Q", title="band mean angle °", format=".2f"),
                ],
            )
        )
    chart = alt.layer(*layers, data=_values(df))
    title = alt.Title(
        "Principal angles by index (mean over layers)",
        subtitle=(
            "lines: the top-k subspaces' angles, ascending; bars: mean angle between each band's singular subspaces"
        ),
    )
    return _facet_types(chart, df, title)


# --- e/f. edits -------------------------------------------------------------------------------


def _edit_long(df: pl.DataFrame, keep: list[str]) -> pl.DataFrame:
    parts = []
    for split, label in SPLIT_LABELS.items():
        parts.append(
            df.select(
                *keep,
                pl.col(f"{split}_accuracy").alias("accuracy"),
                pl.col(f"{split}_ci_low").alias("ci_low"),
                pl.col(f"{split}_ci_high").alias("ci_high"),
                pl.col(f"donor_{split}").alias("donor"),
                pl.col(f"target_{split}").alias("target"),
                pl.col(f"recovery_{split}_pct").alias("recovery_pct"),
            ).with_columns(pl.lit(label).alias("split"))
        )
    return _pct(pl.concat(parts), [*INTERVAL, "donor", "target"])


def _reference_rules() -> list[alt.Chart]:
    """Dashed donor and dotted target accuracy, per split panel."""
    out = []
    for field, dash, color in (("donor", [6, 4], "#2ca02c"), ("target", [2, 3], "#7f7f7f")):
        out.append(
            alt.Chart()
            .mark_rule(strokeDash=dash, color=color)
            .encode(
                y=alt.Y(f"mean({field}):Q"),
                tooltip=[alt.Tooltip(f"mean({field}):Q", title=f"{field} accuracy %", format=".1f")],
            )
        )
    return out


def _split_panels(layers: list, long: pl.DataFrame, title: str) -> alt.FacetChart:
    """An edit chart's layers over ``long``, one panel per split (ID, OOD)."""
    return (
        alt.layer(*layers, data=_values(long))
        .properties(width=FACET_WIDTH + 80, height=FACET_HEIGHT + 40)
        .facet(column=alt.Column("split:N", title=None, sort=["ID", "OOD"]))
        .properties(title=title)
    )


def _edit_tooltip(*extra) -> list:
    return _acc_tooltip(*extra, alt.Tooltip("name:N", title="model")) + [
        alt.Tooltip("recovery_pct:Q", title="recovery %", format=".1f")
    ]


def uv_merge(uv: pl.DataFrame) -> alt.FacetChart:
    """Accuracy (ID and OOD panels) vs the fraction of singular directions restored from the donor
    (top + bottom), a line per edit (UV merge of the top, the bottom or both; σ swap; triplet
    swap), with the donor (dashed, 100% recovery) and target (dotted, 0%) accuracy as rules. The
    reverse experiment (SFT directions into RL models) is left out: it has other donors."""
    _require(uv, ["name", "method", "donor", "target", "top", "bottom", "reverse", "recovery_ood_pct"], "uv_merge")
    fwd = uv.filter(~pl.col("reverse"))
    if fwd.is_empty():
        raise ValueError("uv_merge: no spectral edits of the donor into the target (only reverse-experiment rows)")
    series = (
        pl.when(pl.col("method") != "uv-merge")
        .then(pl.col("method"))
        .when((pl.col("top") > 0) & (pl.col("bottom") > 0))
        .then(pl.lit("uv-merge top+bottom"))
        .when(pl.col("bottom") > 0)
        .then(pl.lit("uv-merge bottom"))
        .otherwise(pl.lit("uv-merge top"))
    )
    fwd = fwd.with_columns(series.alias("edit"), (pl.col("top") + pl.col("bottom")).alias("fraction"))
    long = _edit_long(fwd, ["name", "edit", "fraction", "top", "bottom"]).sort("split", "edit", "fraction", "name")
    edits = [
        e
        for e in ("uv-merge top", "uv-merge bottom", "uv-merge top+bottom", "sigma-swap", "triplet-swap")
        if e in set(long["edit"])
    ]
    x = alt.X(
        "fraction:Q", title="fraction of singular directions restored (top + bottom)", scale=alt.Scale(domain=[0, 1])
    )
    color = alt.Color("edit:N", title="edit", sort=edits, scale=alt.Scale(domain=edits, scheme="category10"))
    base = alt.Chart().encode(x=x, color=color)
    layers = [
        *_reference_rules(),
        base.mark_line().encode(y=_y_acc()),
        base.mark_errorbar(ticks=True).encode(**_y_ci()),
        base.mark_point(filled=True, size=60).encode(
            y=_y_acc(), tooltip=_edit_tooltip(alt.Tooltip("edit:N"), alt.Tooltip("top:Q"), alt.Tooltip("bottom:Q"))
        ),
    ]
    d, t = fwd["donor"][0], fwd["target"][0]
    title = f"UV merge {d} → {t}: accuracy vs fraction restored (dashed: donor, dotted: target)"
    return _split_panels(layers, long, title)


def layer_reset(layers: pl.DataFrame) -> alt.FacetChart:
    """Accuracy (ID and OOD panels) after resetting each layer group to the donor, as bars with
    95% intervals in the table's order, with the donor (dashed) and target (dotted) as rules."""
    _require(layers, ["name", "layers", "donor", "target", "recovery_ood_pct"], "layer_reset")
    if layers.is_empty():
        raise ValueError("layer_reset: the layer-reset table has no rows")
    ids = pl.col("layer_ids").fill_null("?") if "layer_ids" in layers.columns else pl.lit("?")
    df = layers.with_columns(pl.format("layers {} ({})", ids, pl.col("layers")).alias("group"))
    order = df["group"].to_list()
    long = _edit_long(df, ["name", "group", "layers"])
    x = alt.X("group:N", title="layers reset to the donor", sort=order, axis=alt.Axis(labelAngle=-30))
    base = alt.Chart().encode(x=x)
    chart_layers = [
        base.mark_bar(color="#9467bd", opacity=0.85).encode(y=_y_acc(), tooltip=_edit_tooltip(alt.Tooltip("group:N"))),
        base.mark_errorbar(thickness=2, color="black").encode(**_y_ci()),
        *_reference_rules(),
    ]
    d, t = layers["donor"][0], layers["target"][0]
    return _split_panels(chart_layers, long, f"Layer reset {d} → {t} (dashed: donor, dotted: target)")


# --- reading and writing ----------------------------------------------------------------------


def save_chart(
    chart: alt.TopLevelMixin,
    html: str | os.PathLike | None = None,
    png: str | os.PathLike | None = None,
    svg: str | os.PathLike | None = None,
    scale: float = 2.0,
) -> None:
    """Write the chart as standalone offline HTML (JavaScript inlined), PNG (``scale`` × pixels)
    and SVG, each atomically (temporary file, then rename). Rendering uses vl-convert."""
    import vl_convert as vlc

    spec = chart.to_dict()
    if svg is not None:
        with atomic_path(svg) as tmp:
            tmp.write_text(vlc.vegalite_to_svg(spec))
    if png is not None:
        with atomic_path(png) as tmp:
            tmp.write_bytes(vlc.vegalite_to_png(spec, scale=scale))
    if html is not None:
        with atomic_path(html) as tmp:
            tmp.write_text(chart.to_html(inline=True))


def check_offline_html(path: str | os.PathLike) -> None:
    """Raise if a saved HTML chart loads any script from the network (it must open offline)."""
    import re

    text = Path(path).read_text()
    remote = re.findall(r"<script[^>]*\bsrc\s*=\s*[\"']?(?:https?:)?//[^\"' >]+", text, flags=re.IGNORECASE)
    if remote:
        raise ValueError(f"{path}: loads scripts from the network: {remote}")
    if "vegaEmbed" not in text:
        raise ValueError(f"{path}: no inline vega-embed call")
