"""The study's four findings as measured quantities, one value per replicate, each with its mean,
its 95% t-interval over seeds and a verdict (``tables/findings``; README, Seeds):

1. **OOD peaks early, then falls**: OOD accuracy at the peak checkpoint minus the base's (the rise)
   and minus the last checkpoint's (the fall), and ID accuracy gained from the base to the last
   checkpoint. The peak is the checkpoint with the highest OOD accuracy *averaged over seeds*, the
   same checkpoint in every seed (each seed's own maximum would be above its neighbours by
   construction, which no interval can test); each seed's own peak is listed beside it.
2. **RL recovers OOD**: OOD (and ID) accuracy after RL minus before, per starting checkpoint.
3. **Directions move more than values**: from the base to the last SFT checkpoint, in the head band
   (the top 10% of each spectrum, where UV merge acts), the mean relative singular-value change
   ``|Δσ|/σ``, the mean principal angle of the top-k left singular subspaces, and their ratio
   ``sin(angle) / (|Δσ|/σ)``: how much further the directions moved than the values, each as a
   fraction (1 = as far).
4. **UV merge and layer reset recover OOD without RL**: each edit's OOD accuracy minus its target's,
   and its recovery % = (edit − target) / (donor − target) (mean over the seeds where it is
   defined).

Differences are in points (percentage points of accuracy), recovery in %, angles in degrees.
Verdicts compare the interval with no effect (0, or 1 for the ratio): ``yes`` when it lies above,
``no (reversed)`` when below, ``not shown`` when it holds it, ``one seed`` without an interval.
"""

from __future__ import annotations

import math

import polars as pl

from sftrl.tables.seeds import t_interval

FINDINGS = (
    "1. OOD peaks early, then falls",
    "2. RL recovers OOD",
    "3. Directions move more than values",
    "4. UV merge and layer reset recover OOD",
)
SCHEMA = {
    "finding": pl.String,
    "quantity": pl.String,
    "unit": pl.String,
    "mean": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "seeds": pl.Int64,
    "by_seed": pl.String,
    "verdict": pl.String,
}


def verdict(stats: dict, null: float = 0.0) -> str:
    """``yes`` / ``no (reversed)`` / ``not shown`` / ``one seed`` for an interval against ``null``."""
    if stats["n"] == 0:
        return "undefined in every seed"
    if stats["n"] < 2 or stats["low"] is None:
        return "one seed: no interval"
    if stats["low"] > null:
        return f"yes: above {null:g}"
    if stats["high"] < null:
        return f"no (reversed): below {null:g}"
    return f"not shown: interval holds {null:g}"


def _row(finding: int, quantity: str, unit: str, values: list, null: float | None = 0.0) -> dict:
    stats = t_interval(values)
    shown = " / ".join("–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}" for v in values)
    return {
        "finding": FINDINGS[finding - 1],
        "quantity": quantity,
        "unit": unit,
        "mean": stats["mean"],
        "ci_low": stats["low"],
        "ci_high": stats["high"],
        "seeds": stats["n"],
        "by_seed": shown,
        "verdict": "" if null is None else verdict(stats, null),
    }


def _by(df: pl.DataFrame, key: str) -> dict:
    return {r[key]: r for r in df.iter_rows(named=True)}


def _points(a, b):
    return None if a is None or b is None else 100.0 * (a - b)


def _trajectory(seeds: list[int], per_seed: dict) -> list[dict]:
    traj = {s: _by(per_seed[s]["sft-trajectory"], "model") for s in seeds}
    models = [m for m in per_seed[seeds[0]]["sft-trajectory"]["model"].to_list() if m.startswith("sft-")]
    if not models:
        return []
    mean_ood = {m: t_interval([traj[s].get(m, {}).get("ood_accuracy") for s in seeds])["mean"] for m in models}
    peak = max(models, key=lambda m: (mean_ood[m] if mean_ood[m] is not None else -1, -models.index(m)))
    last = models[-1]

    def diff(a, b, split="ood"):
        return [_points(traj[s].get(a, {}).get(f"{split}_accuracy"), traj[s].get(b, {}).get(f"{split}_accuracy"))
                for s in seeds]  # fmt: skip

    own_peaks = []
    for s in seeds:
        rows = [traj[s][m] for m in models if m in traj[s]]
        best = max(rows, key=lambda r: (r["ood_accuracy"], -r["step"]))
        own_peaks.append(float(best["step"]))
    return [
        _row(1, f"OOD: {peak} − base (the rise to the peak of the mean curve)", "points", diff(peak, "base")),
        _row(1, f"OOD: {peak} − {last} (the fall after it)", "points", diff(peak, last)),
        _row(1, f"ID: {last} − base", "points", diff(last, "base", "id")),
        _row(1, "each seed's own peak-OOD checkpoint (SFT step)", "step", own_peaks, null=None),
    ]


def _rl(seeds: list[int], per_seed: dict) -> list[dict]:
    if any("rl-recovery" not in per_seed[s] for s in seeds):
        return []
    runs = {s: _by(per_seed[s]["rl-recovery"], "rl_model") for s in seeds}
    out = []
    for model in per_seed[seeds[0]]["rl-recovery"]["rl_model"].to_list():
        start = runs[seeds[0]][model]["sft_model"]
        for split in ("ood", "id"):
            values = [_points(runs[s].get(model, {}).get(f"rl_{split}_accuracy"),
                              runs[s].get(model, {}).get(f"sft_{split}_accuracy")) for s in seeds]  # fmt: skip
            out.append(_row(2, f"{split.upper()}: {model} − {start}", "points", values))
    return out


def _spectra(seeds: list[int], per_seed: dict) -> list[dict]:
    if any("spectrum" not in per_seed[s] for s in seeds):
        return []
    first = per_seed[seeds[0]]["spectrum"]
    later = first.filter(pl.col("a") == "base")["b"].unique().to_list()
    if not later:
        return []
    last = max(later, key=lambda m: int(m.rsplit("-", 1)[1]))
    dsigma, angle, ratio = [], [], []
    for s in seeds:
        head = per_seed[s]["spectrum"].filter(
            (pl.col("a") == "base") & (pl.col("b") == last) & (pl.col("band") == "head")
        )
        if head.is_empty():
            dsigma.append(None), angle.append(None), ratio.append(None)
            continue
        w = head["matrices"].cast(pl.Float64)
        d = float((head["mean_rel_dsigma"] * w).sum() / w.sum())
        a = float((head["mean_angle_u"] * w).sum() / w.sum())
        dsigma.append(100.0 * d)
        angle.append(a)
        ratio.append(math.sin(math.radians(a)) / d if d > 0 else None)
    return [
        _row(3, f"head band, base → {last}: mean |Δσ|/σ", "%", dsigma, null=None),
        _row(3, f"head band, base → {last}: mean principal angle (U, top-k)", "degrees", angle, null=None),
        _row(3, f"head band, base → {last}: sin(angle) / (|Δσ|/σ)", "ratio", ratio, null=1.0),
    ]


def _edit_label(row: dict) -> str:
    names = {"uv-merge": "UV merge", "sigma-swap": "σ swap", "triplet-swap": "triplet swap"}
    if row.get("layers") is not None and row.get("method", "layer-reset") == "layer-reset":
        return f"layer reset {row['layers']} of the depth"
    parts = [f"top {row['top']:g}" if row.get("top") else "", f"bottom {row['bottom']:g}" if row.get("bottom") else ""]
    band = " + ".join(p for p in parts if p) or "nothing"
    return f"{names.get(row['method'], row['method'])} {band}"


def _edits(seeds: list[int], per_seed: dict) -> list[dict]:
    out = []
    for table, key in (("uv-merge", ("method", "top", "bottom")), ("layer-reset", ("layers",))):
        if any(table not in per_seed[s] for s in seeds):
            continue
        frames = {s: per_seed[s][table] for s in seeds}
        if "reverse" in frames[seeds[0]].columns:
            frames = {s: f.filter(~pl.col("reverse")) for s, f in frames.items()}
        rows = {s: {tuple(r[k] for k in key): r for r in f.iter_rows(named=True)} for s, f in frames.items()}
        for r in frames[seeds[0]].iter_rows(named=True):
            k = tuple(r[c] for c in key)
            mine = [rows[s].get(k) for s in seeds]
            gain = [None if m is None else _points(m["ood_accuracy"], m["target_ood"]) for m in mine]
            rec = [None if m is None else m["recovery_ood_pct"] for m in mine]
            label = _edit_label(r)
            out.append(_row(4, f"OOD: {label} − target", "points", gain))
            out.append(_row(4, f"recovery % of {label}", "%", rec))
    return out


def findings(per_seed: dict[int, dict[str, pl.DataFrame]]) -> pl.DataFrame:
    """The findings table from every replicate's tables (``{seed: {table name: frame}}``: the
    sft-trajectory, rl-recovery, spectrum, uv-merge and layer-reset tables it has), rows in the
    order of the findings. A finding whose tables the study does not make has no rows."""
    seeds = sorted(per_seed)
    if not seeds or any("sft-trajectory" not in per_seed[s] for s in seeds):
        raise ValueError("findings need every seed's sft-trajectory table")
    rows = _trajectory(seeds, per_seed) + _rl(seeds, per_seed) + _spectra(seeds, per_seed) + _edits(seeds, per_seed)
    return pl.DataFrame(rows, schema=SCHEMA)


FINDINGS_MARKDOWN = {
    "finding": ("raw", "finding"),
    "quantity": ("raw", "quantity"),
    "unit": ("raw", "unit"),
    "mean [95% CI over seeds]": ("ci_raw1", ("mean", "ci_low", "ci_high")),
    "per seed": ("raw", "by_seed"),
    "verdict": ("raw", "verdict"),
}

FINDINGS_FOOTNOTE = (
    "One value per training seed (per seed, in seed order); mean and 95% t-interval over seeds, "
    "mean ± t(0.975, n − 1)·sd/√n, with the evaluation hands held fixed. points = percentage points "
    "of accuracy. Verdict: yes when the interval lies above no effect (0; 1 for the ratio), not "
    "shown when it holds it, no (reversed) when it lies below. Finding 1 measures at the peak of the "
    "mean curve, the same checkpoint in every seed (chosen from these seeds, so its rise and fall lean "
    "slightly high); finding 3 compares sin(angle) of the top singular directions with the relative "
    "change of the top singular values (1 = moved as far)."
)
