"""The edit tables: every spectral edit (UV merge, σ swap, triplet swap, the reverse experiment) and
every layer reset beside its donor and target, with the recovery % (docs/study.md §8)."""

from __future__ import annotations

import polars as pl

from sftrl.study import EDIT_NAME, parse_edit, parse_edit_name
from sftrl.tables.render import ci
from sftrl.tables.summaries import interval_schema, intervals, recovery, wide_by_split


def edit_tables(summaries: pl.DataFrame, layer_ids: dict | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(spectral edits, layer resets): accuracy of every edited model beside its donor and target,
    and recovery % = (edit − target) / (donor − target) on OOD and on ID.

    A layer reset's ``layers`` is its range as fractions of the depth (``0-0.25``); ``layer_ids``
    maps its name part (``layers0-0.25``) to the decoder layers it reset (``0-6``).

    ``summaries`` holds the edited models and every donor and target they name; other models
    are ignored. Spectral rows are sorted by method, then the reverse experiment (the donor is an
    SFT model, the target its RL model) last, then top and bottom, then the target's step
    (numerically: ppo-25 before ppo-100); layer resets by layer range.
    """
    wide = wide_by_split(summaries)
    acc = {r["model"]: r for r in wide.iter_rows(named=True)}
    rows = []
    for name in wide["model"]:
        if not EDIT_NAME.match(name):
            continue
        e = parse_edit_name(name)
        for ref in ("donor", "target"):
            if e[ref] not in acc:
                raise ValueError(f"{name}: no evaluation summary of its {ref} {e[ref]}")
        edit, donor, target = acc[name], acc[e["donor"]], acc[e["target"]]
        row = {**e, "reverse": parse_edit(name).reverse, "layer_ids": None, **intervals(edit)}
        if e["layers"] is not None and layer_ids:
            row["layer_ids"] = layer_ids.get(f"layers{e['layers']}")
        for split in ("id", "ood"):
            row[f"donor_{split}"] = donor[f"{split}_accuracy"]
            row[f"target_{split}"] = target[f"{split}_accuracy"]
            row[f"recovery_{split}_pct"] = recovery(
                edit[f"{split}_accuracy"],
                target[f"{split}_accuracy"],
                donor[f"{split}_accuracy"],
                target[f"{split}_ci_high"],
                donor[f"{split}_ci_low"],
            )
        rows.append(row)
    schema = {
        "name": pl.String,
        "method": pl.String,
        "donor": pl.String,
        "target": pl.String,
        "top": pl.Float64,
        "bottom": pl.Float64,
        "layers": pl.String,
        "layer_ids": pl.String,
        "reverse": pl.Boolean,
        **interval_schema(),
        **{f"{k}_{sp}": pl.Float64 for sp in ("id", "ood") for k in ("donor", "target")},
        **{f"recovery_{sp}_pct": pl.Float64 for sp in ("id", "ood")},
    }
    df = pl.DataFrame(rows, schema=schema)
    method_order = pl.col("method").replace_strict(
        {"uv-merge": 0, "sigma-swap": 1, "triplet-swap": 2, "layer-reset": 3}, return_dtype=pl.Int64
    )
    target_step = pl.col("target").str.extract(r"-(\d+)$", 1).cast(pl.Int64).fill_null(0)
    spectral = (
        df.filter(pl.col("method") != "layer-reset")
        .sort([pl.col("reverse"), method_order, pl.col("top"), pl.col("bottom"), target_step, pl.col("name")])
        .drop("layers", "layer_ids")
    )
    first = pl.col("layers").str.extract(r"^([0-9.]+)-", 1).cast(pl.Float64)
    last = pl.col("layers").str.extract(r"-([0-9.]+)$", 1).cast(pl.Float64)
    layers = (
        df.filter(pl.col("method") == "layer-reset")
        .sort([first, last, pl.col("name")])
        .drop("top", "bottom", "reverse")
    )
    return spectral, layers


_EDIT_COMMON = {
    "ID % [95% CI]": ci("id_"),
    "OOD % [95% CI]": ci("ood_"),
    "donor OOD %": ("pct", "donor_ood"),
    "target OOD %": ("pct", "target_ood"),
    "OOD recovery %": ("raw1", "recovery_ood_pct"),
    "ID recovery %": ("raw1", "recovery_id_pct"),
}


UV_MERGE_MARKDOWN = {
    "method": ("raw", "method"),
    "donor → target": ("arrow", ("donor", "target")),
    "top": ("raw", "top"),
    "bottom": ("raw", "bottom"),
    **_EDIT_COMMON,
}


LAYER_RESET_MARKDOWN = {
    "layers (fraction of depth)": ("raw", "layers"),
    "layer ids": ("raw", "layer_ids"),
    "donor → target": ("arrow", ("donor", "target")),
    **_EDIT_COMMON,
}
