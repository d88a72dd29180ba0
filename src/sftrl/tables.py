"""Result tables: tidy polars frames from evaluation summaries, written as CSV and Markdown.

Row order is always explicit (sorted), so the same results give byte-identical tables.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path

import polars as pl

from sftrl.atomic import write_text
from sftrl.constants import BANDS, MATRIX_TYPES

SUMMARY_FIELDS = (
    "accuracy",
    "ci_low",
    "ci_high",
    "first_accuracy",
    "first_ci_low",
    "first_ci_high",
    "numbers_correct",
    "format_error",
    "extra_ten",
    "mean_turns",
    "heldout_n",
    "heldout_accuracy",
)


def model_step(model: str) -> int:
    """SFT step of a model name: ``base`` is step 0, ``sft-<step>`` is ``<step>``."""
    if model == "base":
        return 0
    m = re.fullmatch(r"sft-(\d+)", model)
    if not m:
        raise ValueError(f"not a trajectory model name: {model!r} (expected base or sft-<step>)")
    return int(m.group(1))


def by_turn_text(fractions: list[float] | None) -> str | None:
    """Shares of hands first solved on turns 1, 2, ... as ``"61.5 / 5.1 / 2.0"`` (percent)."""
    if not fractions:
        return None
    return " / ".join(f"{100 * f:.1f}" for f in fractions)


def read_summaries(paths: Iterable[str | os.PathLike]) -> pl.DataFrame:
    """Evaluation summaries (``eval/<model>/<split>.json``) as one long frame; ``solved_by_turn``
    as text (:func:`by_turn_text`)."""
    rows = []
    for path in paths:
        with open(path) as fh:
            s = json.load(fh)
        rows.append(
            {
                "model": s["model"],
                "split": s["split"],
                **{k: s.get(k) for k in SUMMARY_FIELDS},
                "solved_by_turn": by_turn_text(s.get("solved_by_turn")),
            }
        )
    schema = {"model": pl.String, "split": pl.String, **{k: pl.Float64 for k in SUMMARY_FIELDS}, "solved_by_turn": pl.String}
    return pl.DataFrame(rows, schema=schema)


def wide_by_split(long: pl.DataFrame) -> pl.DataFrame:
    """One row per model, ``<split>_<field>`` columns (id_accuracy, ood_accuracy, ...)."""
    parts = []
    for split in ("id", "ood"):
        part = long.filter(pl.col("split") == split).drop("split")
        parts.append(part.rename({k: f"{split}_{k}" for k in (*SUMMARY_FIELDS, "solved_by_turn")}))
    return parts[0].join(parts[1], on="model", how="full", coalesce=True)


def sft_trajectory(summaries: pl.DataFrame) -> pl.DataFrame:
    """ID and OOD accuracy (with 95% intervals) of the base (step 0) and every SFT checkpoint."""
    wide = wide_by_split(summaries)
    wide = wide.with_columns(pl.col("model").map_elements(model_step, return_dtype=pl.Int64).alias("step"))
    return wide.select("model", "step", pl.exclude("model", "step")).sort("step")


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


def to_markdown(
    df: pl.DataFrame, columns: dict[str, tuple[str, str | tuple[str, str, str]]], footnote: str | None = None
) -> str:
    """A Markdown table of selected columns, then ``footnote`` (a paragraph) if given.

    ``columns`` maps a header to ``(kind, column)``; ``kind`` is ``pct`` (a fraction shown as a
    percentage), ``ci`` (``column`` is a triple: value, low, high → ``41.0 [34.9, 47.4]``),
    ``dpct`` (a difference of fractions in points, signed), ``arrow`` or ``raw``.
    """
    headers = [_escape_pipes(h) for h in columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in df.iter_rows(named=True):
        cells = []
        for kind, col in columns.values():
            if kind == "arrow":
                cells.append(f"{row[col[0]]} → {row[col[1]]}")
            elif kind == "kl":
                a, b = (row[c] for c in col)
                cells.append(f"{_fmt(a, 'kl')} / {_fmt(b, 'kl')}")
            elif kind == "arrow_pct":
                cells.append(f"{_fmt(row[col[0]], 'pct')} → {_fmt(row[col[1]], 'pct')}")
            elif kind == "ci":
                v, lo, hi = (row[c] for c in col)
                cells.append("–" if v is None else f"{_fmt(v, 'pct')} [{_fmt(lo, 'pct')}, {_fmt(hi, 'pct')}]")
            elif kind == "dpct":
                v = row[col]
                cells.append("–" if v is None else f"{100 * v:+.1f}")
            else:
                cells.append(_fmt(row[col], kind))
        lines.append("| " + " | ".join(_escape_pipes(c) for c in cells) + " |")
    text = "\n".join(lines) + "\n"
    return text + ("\n" + footnote.strip() + "\n" if footnote else "")


def _escape_pipes(text: str) -> str:
    """A literal ``|`` inside a Markdown table cell is written ``\\|`` (e.g. ``mean \\|Δσ\\|/σ``)."""
    return text.replace("|", "\\|")


TRAJECTORY_MARKDOWN = {
    "model": ("raw", "model"),
    "step": ("raw", "step"),
    "ID acc % [95% CI]": ("ci", ("id_accuracy", "id_ci_low", "id_ci_high")),
    "ID 1st attempt %": ("pct", "id_first_accuracy"),
    "OOD acc % [95% CI]": ("ci", ("ood_accuracy", "ood_ci_low", "ood_ci_high")),
    "OOD 1st attempt % [95% CI]": ("ci", ("ood_first_accuracy", "ood_first_ci_low", "ood_first_ci_high")),
    "OOD solved on turn 1 / 2 / … %": ("raw", "ood_solved_by_turn"),
    "ID format errors %": ("pct", "id_format_error"),
    "ID numbers-correct %": ("pct", "id_numbers_correct"),
    "OOD numbers-correct %": ("pct", "ood_numbers_correct"),
    "OOD extra 10 %": ("pct", "ood_extra_ten"),
    "OOD held-out acc %": ("pct", "ood_heldout_accuracy"),
}
TRAJECTORY_FOOTNOTE = (
    "Accuracy = hands solved within all the attempts (the study's metric); 1st attempt = solved by the "
    "first answer; solved on turn t = share of hands first solved by the t-th answer, after t − 1 "
    "verifier feedback turns. Numbers-correct, format errors and extra 10 describe the first answer; "
    "extra 10 = the answer uses 10 more often than the hand holds a 10 (the ID rule's J/Q/K = 10 applied "
    "to an OOD hand whose prompt says 11, 12, 13)."
)
RECOVERY_FOOTNOTE = (
    "Recovery % = (X − start) / (reference − start). – : undefined, because the reference is not above "
    "the start by more than their 95% intervals (the reference's lower bound ≤ the start, or the start's "
    "upper bound ≥ the reference), so the ratio would divide by a gap that is negative or noise."
)


def recovery(value, start, reference, start_high=None, reference_low=None):
    """The study's recovery %: how much of the gap from ``start`` to ``reference`` ``value`` closes.

    (value − start) / (reference − start) × 100. None where the gap is not clearly positive: the
    reference is not above the start, or (given the 95% bounds ``start_high`` and
    ``reference_low``) each lies within the other's interval (:data:`RECOVERY_FOOTNOTE`).
    """
    if value is None or start is None or reference is None or reference <= start:
        return None
    if start_high is not None and reference_low is not None and (reference_low <= start or start_high >= reference):
        return None
    return 100.0 * (value - start) / (reference - start)


def rl_recovery(summaries: pl.DataFrame) -> pl.DataFrame:
    """For each SFT checkpoint RL started from: its SFT and RL accuracy (ID and OOD; all attempts
    and the first attempt), the change RL made (``delta_*``, RL − SFT), the RL model's solve rate
    by turn, and the recovery % = (RL OOD − SFT OOD) / (peak SFT OOD − SFT OOD) (null where the gap
    is not clearly positive, :func:`recovery`), where the peak is the highest OOD accuracy over the
    SFT checkpoints in ``summaries``."""
    wide = wide_by_split(summaries)
    kind = pl.col("model").str.extract(r"^(sft|ppo|grpo)-\d+$", 1)
    wide = wide.with_columns(kind.alias("kind"), pl.col("model").str.extract(r"-(\d+)$", 1).cast(pl.Int64).alias("step"))
    if wide["kind"].is_null().any():
        bad = wide.filter(pl.col("kind").is_null())["model"].to_list()
        raise ValueError(f"rl_recovery takes sft-<step> and ppo-<step> (or grpo-<step>) summaries; got {bad}")
    sft_rows = wide.filter(pl.col("kind") == "sft").sort(["ood_accuracy", "step"], descending=[True, False])
    peak = sft_rows.row(0, named=True) if sft_rows.height else None
    cols = ["accuracy", "ci_low", "ci_high", "first_accuracy", "first_ci_low", "first_ci_high"]

    def side(name: str, which):
        return wide.filter(which).select(
            "step",
            *[pl.col(f"{sp}_{c}").alias(f"{name}_{sp}_{c}") for sp in ("id", "ood") for c in cols],
            *[pl.col(f"{sp}_solved_by_turn").alias(f"{name}_{sp}_solved_by_turn") for sp in ("id", "ood")],
        )

    rl = side("rl", pl.col("kind") != "sft")
    sft = side("sft", pl.col("kind") == "sft")
    out = rl.join(sft, on="step", how="left").sort("step")
    out = out.with_columns(
        *[(pl.col(f"rl_{sp}_accuracy") - pl.col(f"sft_{sp}_accuracy")).alias(f"delta_{sp}") for sp in ("id", "ood")],
        *[(pl.col(f"rl_{sp}_first_accuracy") - pl.col(f"sft_{sp}_first_accuracy")).alias(f"delta_{sp}_first") for sp in ("id", "ood")],
    )
    rec = [
        recovery(r, s_, peak["ood_accuracy"], s_hi, peak["ood_ci_low"]) if peak else None
        for r, s_, s_hi in zip(out["rl_ood_accuracy"], out["sft_ood_accuracy"], out["sft_ood_ci_high"], strict=True)
    ]
    return out.with_columns(
        pl.lit(peak["model"] if peak else None, dtype=pl.String).alias("peak_sft_model"),
        pl.lit(peak["ood_accuracy"] if peak else None, dtype=pl.Float64).alias("peak_sft_ood"),
        pl.Series("recovery_pct", rec, dtype=pl.Float64),
    ).select("step", pl.exclude("step"))


RL_RECOVERY_MARKDOWN = {
    "from SFT step": ("raw", "step"),
    "SFT ID %": ("ci", ("sft_id_accuracy", "sft_id_ci_low", "sft_id_ci_high")),
    "RL ID %": ("ci", ("rl_id_accuracy", "rl_id_ci_low", "rl_id_ci_high")),
    "ΔID": ("dpct", "delta_id"),
    "SFT OOD %": ("ci", ("sft_ood_accuracy", "sft_ood_ci_low", "sft_ood_ci_high")),
    "RL OOD %": ("ci", ("rl_ood_accuracy", "rl_ood_ci_low", "rl_ood_ci_high")),
    "ΔOOD": ("dpct", "delta_ood"),
    "SFT → RL OOD 1st attempt %": ("arrow_pct", ("sft_ood_first_accuracy", "rl_ood_first_accuracy")),
    "RL OOD solved on turn 1 / 2 / … %": ("raw", "rl_ood_solved_by_turn"),
    "peak SFT OOD %": ("pct", "peak_sft_ood"),
    "recovery %": ("raw1", "recovery_pct"),
}


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a PPO/GRPO ``metrics.jsonl`` (one per update)."""
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def training_summary(rows: list[dict], window: int = 3) -> dict:
    """What an RL run did to its own objective: mean success rate of the first and the last
    ``window`` updates, mean and largest approx-KL, mean epochs run (``target_kl`` stops early)
    and the entropy of the sampled responses at the start and the end."""

    def mean(values):
        values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        return sum(values) / len(values) if values else None

    def col(name, part=None):
        picked = rows if part is None else part
        return [r.get(name) for r in picked]

    first, last = rows[:window], rows[-window:]
    return {
        "updates": len(rows),
        "success_first": mean(col("charts/success_rate", first)),
        "success_last": mean(col("charts/success_rate", last)),
        "approx_kl_mean": mean(col("losses/approx_kl")),
        "approx_kl_max": max((v for v in col("losses/approx_kl") if v is not None), default=None),
        "epochs_mean": mean(col("losses/epochs")),
        "entropy_first": mean(col("charts/entropy", first)),
        "entropy_last": mean(col("charts/entropy", last)),
    }


def rl_sweep(summaries: pl.DataFrame, metrics: dict[str, list[dict]], variants: dict[str, dict]) -> pl.DataFrame:
    """One row per RL run of the sweep: its settings (the variant's overrides; ``default`` = the
    study's RL settings), what it did to its training objective (:func:`training_summary`) and
    to ID/OOD accuracy (the start's and the result's, with the change). ``learns``: the mean
    success rate of the last 3 updates is above that of the first 3; ``id_kept``: ID accuracy
    after RL is not below the start's 95% interval. Rows by variant (default first), then step."""
    wide = {r["model"]: r for r in wide_by_split(summaries).iter_rows(named=True)}
    rows = []
    for model, history in metrics.items():
        m = re.fullmatch(r"(?:ppo|grpo)-(\d+)(?:-(.+))?", model)
        if not m:
            raise ValueError(f"rl_sweep: not an RL model name: {model!r}")
        step, variant = int(m.group(1)), m.group(2) or "default"
        start, end = wide.get(f"sft-{step}"), wide.get(model)
        if start is None or end is None:
            raise ValueError(f"rl_sweep: no evaluation summary of {model if end is None else f'sft-{step}'}")
        train = training_summary(history)
        overrides = variants.get(variant, {})
        row = {
            "variant": variant,
            "settings": ", ".join(f"{k}={v}" for k, v in overrides.items()) or "(the study's rl: settings)",
            "step": step,
            **train,
            "learns": train["success_last"] is not None and train["success_last"] > train["success_first"],
        }
        for split in ("id", "ood"):
            for c in ("accuracy", "ci_low", "ci_high", "first_accuracy"):
                row[f"rl_{split}_{c}"] = end[f"{split}_{c}"]
            row[f"sft_{split}_accuracy"] = start[f"{split}_accuracy"]
            row[f"sft_{split}_first_accuracy"] = start[f"{split}_first_accuracy"]
            row[f"delta_{split}"] = end[f"{split}_accuracy"] - start[f"{split}_accuracy"]
        row["id_kept"] = end["id_accuracy"] >= start["id_ci_low"]
        rows.append(row)
    order = {"default": -1, **{v: i for i, v in enumerate(variants)}}
    df = pl.DataFrame(rows, infer_schema_length=None)
    if df.is_empty():
        return df
    return df.with_columns(pl.col("variant").replace_strict(order, return_dtype=pl.Int64).alias("_v")).sort("_v", "step").drop("_v")


RL_SWEEP_MARKDOWN = {
    "variant": ("raw", "variant"),
    "settings": ("raw", "settings"),
    "from SFT step": ("raw", "step"),
    "train success first 3 → last 3 %": ("arrow_pct", ("success_first", "success_last")),
    "approx-KL mean / max": ("kl", ("approx_kl_mean", "approx_kl_max")),
    "epochs": ("raw", "epochs_mean"),
    "SFT → RL ID %": ("arrow_pct", ("sft_id_accuracy", "rl_id_accuracy")),
    "ΔID": ("dpct", "delta_id"),
    "SFT → RL OOD %": ("arrow_pct", ("sft_ood_accuracy", "rl_ood_accuracy")),
    "ΔOOD": ("dpct", "delta_ood"),
    "RL OOD % [95% CI]": ("ci", ("rl_ood_accuracy", "rl_ood_ci_low", "rl_ood_ci_high")),
    "learns": ("yesno", "learns"),
    "ID kept": ("yesno", "id_kept"),
}
RL_SWEEP_FOOTNOTE = (
    "Train success = share of training episodes solved, mean of the first and of the last 3 updates; "
    "approx-KL = k3 estimate of KL(old ‖ new) per update (mean over its minibatches); epochs = mean PPO "
    "epochs per update (fewer than ppo_epochs when target_kl stopped an update). learns: the last 3 "
    "updates solve more than the first 3; ID kept: RL's ID accuracy is not below the start's 95% interval."
)


def peak_ood(summaries: pl.DataFrame) -> dict:
    """The SFT checkpoint with the highest OOD accuracy; ties go to the earliest step."""
    ood = summaries.filter(pl.col("split") == "ood").with_columns(
        pl.col("model").map_elements(model_step, return_dtype=pl.Int64).alias("step")
    )
    if ood.is_empty():
        raise ValueError("peak_ood needs OOD summaries of SFT checkpoints")
    best = ood.sort(["accuracy", "step"], descending=[True, False]).row(0, named=True)
    return {"model": best["model"], "step": best["step"], "ood_accuracy": best["accuracy"]}


# --- edits ------------------------------------------------------------------------------------

_MODEL = r"base|sft-\d+|ppo-\d+"
EDIT_NAME = re.compile(
    rf"^(?P<method>uvmerge|sigmaswap|tripletswap|layerreset)-(?P<donor>{_MODEL})-into-(?P<target>{_MODEL})-"
    r"(?:top(?P<top>[0-9.]+)(?:-bottom(?P<bottom>[0-9.]+))?|layers(?P<layers>[0-9]+(?:-[0-9]+)?))$"
)
EDIT_METHODS = {"uvmerge": "uv-merge", "sigmaswap": "sigma-swap", "tripletswap": "triplet-swap", "layerreset": "layer-reset"}


def parse_edit_name(name: str) -> dict:
    """``uvmerge-sft-50-into-sft-800-top0.2`` → method, donor, target, top, bottom (or layers)."""
    m = EDIT_NAME.match(name)
    if not m:
        raise ValueError(
            f"not an edited model name: {name!r} (expected <method>-<donor>-into-<target>-top<f>[-bottom<f>] "
            "or layerreset-<donor>-into-<target>-layers<a>[-<b>])"
        )
    d = m.groupdict()
    return {
        "name": name,
        "method": EDIT_METHODS[d["method"]],
        "donor": d["donor"],
        "target": d["target"],
        "top": float(d["top"]) if d["top"] is not None else None,
        "bottom": float(d["bottom"] or 0) if d["top"] is not None else None,
        "layers": d["layers"],
    }


def edit_tables(summaries: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(spectral edits, layer resets): accuracy of every edited model beside its donor and target,
    and recovery % = (edit − target) / (donor − target) on OOD and on ID.

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
        row = {**e, "reverse": e["donor"].startswith("sft-") and e["target"].startswith("ppo-")}
        for split in ("id", "ood"):
            for c in ("accuracy", "ci_low", "ci_high"):
                row[f"{split}_{c}"] = edit[f"{split}_{c}"]
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
        "name": pl.String, "method": pl.String, "donor": pl.String, "target": pl.String, "top": pl.Float64,
        "bottom": pl.Float64, "layers": pl.String, "reverse": pl.Boolean,
        **{f"{sp}_{c}": pl.Float64 for sp in ("id", "ood") for c in ("accuracy", "ci_low", "ci_high")},
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
        .drop("layers")
    )
    first = pl.col("layers").str.extract(r"^(\d+)", 1).cast(pl.Int64)
    last = pl.col("layers").str.extract(r"(\d+)$", 1).cast(pl.Int64)
    layers = df.filter(pl.col("method") == "layer-reset").sort([first, last, pl.col("name")]).drop("top", "bottom", "reverse")
    return spectral, layers


_EDIT_COMMON = {
    "ID % [95% CI]": ("ci", ("id_accuracy", "id_ci_low", "id_ci_high")),
    "OOD % [95% CI]": ("ci", ("ood_accuracy", "ood_ci_low", "ood_ci_high")),
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
    "layers": ("raw", "layers"),
    "donor → target": ("arrow", ("donor", "target")),
    **_EDIT_COMMON,
}


# --- spectra ----------------------------------------------------------------------------------


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
    kind = {("base", "sft"): 0, ("sft", "sft"): 1, ("sft", "ppo"): 2}.get((kind_a, kind_b), 3)
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
        frames.append(pl.read_parquet(path).with_columns(pl.lit(i).alias("pair_order"), pl.lit(a).alias("a"), pl.lit(b).alias("b")))
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


def write_table(
    df: pl.DataFrame, csv: str | os.PathLike, md: str | os.PathLike, markdown_columns: dict, footnote: str | None = None
) -> None:
    """CSV with every column (full precision) and a Markdown view (with ``footnote``); both atomic."""
    Path(csv).parent.mkdir(parents=True, exist_ok=True)
    write_text(df.write_csv(), csv)
    write_text(to_markdown(df, markdown_columns, footnote), md)


# --- stage table (PAPER.md §5.1) ---------------------------------------------------------------

STAGES = ("Premax", "Moderate", "RL")
STAGE_DESCRIPTIONS = {
    "Premax": "SFT checkpoint with the highest OOD accuracy",
    "Moderate": "later SFT checkpoint that RL starts from",
    "RL": "PPO from the moderate checkpoint",
}


def stage_table(summaries: pl.DataFrame, premax: str, moderate: str, rl: str) -> pl.DataFrame:
    """The study's stage table: Premax, Moderate and RL (rows in that order) × ID/OOD accuracy
    with 95% intervals, and on the RL row the recovery % = (RL − moderate) / (premax − moderate)
    for OOD and for ID (null on the other rows, and where premax = moderate)."""
    wide = wide_by_split(summaries)
    acc = {r["model"]: r for r in wide.iter_rows(named=True)}
    models = dict(zip(STAGES, (premax, moderate, rl), strict=True))
    for stage, model in models.items():
        if model not in acc:
            raise ValueError(f"stage table: no evaluation summary of the {stage} model {model}")
    rows = []
    for stage, model in models.items():
        row = {"stage": stage, "model": model, "description": STAGE_DESCRIPTIONS[stage]}
        for split in ("id", "ood"):
            for c in ("accuracy", "ci_low", "ci_high"):
                row[f"{split}_{c}"] = acc[model][f"{split}_{c}"]
        for split in ("id", "ood"):
            row[f"recovery_{split}_pct"] = (
                recovery(
                    acc[rl][f"{split}_accuracy"],
                    acc[moderate][f"{split}_accuracy"],
                    acc[premax][f"{split}_accuracy"],
                    acc[moderate][f"{split}_ci_high"],
                    acc[premax][f"{split}_ci_low"],
                )
                if stage == "RL"
                else None
            )
        rows.append(row)
    schema = {
        "stage": pl.String, "model": pl.String, "description": pl.String,
        **{f"{sp}_{c}": pl.Float64 for sp in ("id", "ood") for c in ("accuracy", "ci_low", "ci_high")},
        **{f"recovery_{sp}_pct": pl.Float64 for sp in ("id", "ood")},
    }
    return pl.DataFrame(rows, schema=schema)


STAGES_MARKDOWN = {
    "stage": ("raw", "stage"),
    "model": ("raw", "model"),
    "ID acc % [95% CI]": ("ci", ("id_accuracy", "id_ci_low", "id_ci_high")),
    "OOD acc % [95% CI]": ("ci", ("ood_accuracy", "ood_ci_low", "ood_ci_high")),
    "OOD recovery %": ("raw1", "recovery_ood_pct"),
    "ID recovery %": ("raw1", "recovery_id_pct"),
}


# --- per-index spectrum profile (plot data) ---------------------------------------------------

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
        "a", "b", "pair", "type", "bin", "index_start", "index_stop", "n", "rel_start", "rel_stop", "rel_index",
        "band", "matrices", "abs_rel_dsigma", "angle_u", "angle_v",
    )


def write_csv(df: pl.DataFrame, csv: str | os.PathLike) -> None:
    """A CSV of every column, atomically."""
    Path(csv).parent.mkdir(parents=True, exist_ok=True)
    write_text(df.write_csv(), csv)


# --- job records (Snakemake's benchmark: files) -------------------------------------------------

# Stages in pipeline order; a job's stage is its benchmark file's directory (benchmarks/<stage>/).
BENCHMARK_STAGES = ("base", "sft", "rl", "evaluate", "svd", "spectrum", "edits")
BENCHMARK_MARKDOWN = {
    "stage": ("raw", "stage"),
    "job": ("raw", "job"),
    "wall time (s)": ("raw1", "seconds"),
    "CPU time (s)": ("raw1", "cpu_seconds"),
    "peak memory (MB)": ("raw1", "max_rss_mb"),
}
BENCHMARK_FOOTNOTE = (
    "One row per job of the stages that train, evaluate or decompose, from Snakemake's "
    "`benchmark:` records (`benchmarks/<stage>/<job>.tsv`): wall time, CPU time and peak resident "
    "memory (RSS) of the job's processes. A job that ran again shows its last run."
)


def benchmark_table(paths: Iterable[str | os.PathLike]) -> pl.DataFrame:
    """The benchmark records ``benchmarks/<stage>/<job>.tsv`` as one table: stage, job, wall time
    (s), CPU time (s) and peak RSS (MB); rows by stage (pipeline order), then job (natural order)."""
    rows = []
    for path in map(Path, paths):
        record = pl.read_csv(path, separator="\t", null_values=["NA", "-", ""], infer_schema_length=0)
        last = record.row(-1, named=True)  # one row per run; `benchmark: repeat(...)` adds more

        def number(column):
            value = last.get(column)
            return None if value is None else float(value)

        rows.append(
            {
                "stage": path.parent.name,
                "job": path.stem,
                "seconds": number("s"),
                "cpu_seconds": number("cpu_time"),
                "max_rss_mb": number("max_rss"),
            }
        )
    order = {stage: i for i, stage in enumerate(BENCHMARK_STAGES)}
    natural = lambda text: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]  # noqa: E731
    rows.sort(key=lambda r: (order.get(r["stage"], len(order)), r["stage"], natural(r["job"])))
    schema = {"stage": pl.String, "job": pl.String, "seconds": pl.Float64, "cpu_seconds": pl.Float64, "max_rss_mb": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


# --- tables for the Snakemake report -----------------------------------------------------------


def parse_markdown_table(text: str, source: str | os.PathLike = "<text>") -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of a pipe table as `to_markdown` writes it (a footnote after a blank line is
    not part of it); ValueError naming ``source``."""
    lines = [line.strip() for line in text.strip().split("\n\n", 1)[0].splitlines()]
    if len(lines) < 2 or not lines[0].startswith("|") or not set(lines[1]) <= set("|-: "):
        raise ValueError(f"{source}: not a Markdown pipe table (header line, then a |---| line)")

    def cells(line: str, lineno: int) -> list[str]:
        if not (line.startswith("|") and line.endswith("|")):
            raise ValueError(f"{source}:{lineno}: a table row must start and end with '|': {line!r}")
        return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line[1:-1])]

    headers = cells(lines[0], 1)
    rows = []
    for i, line in enumerate(lines[2:], start=3):
        row = cells(line, i)
        if len(row) != len(headers):
            raise ValueError(f"{source}:{i}: {len(row)} cells, but the header has {len(headers)}")
        rows.append(row)
    return headers, rows


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


def report_table_html(markdown: str, title: str, caption: str = "", source: str | os.PathLike = "<text>") -> str:
    """A self-contained HTML page (no scripts, no external resources) showing a Markdown table:
    what the Snakemake report displays for each result table."""
    import html

    headers, rows = parse_markdown_table(markdown, source)
    note = markdown.strip().split("\n\n", 1)[1].strip() if "\n\n" in markdown.strip() else ""
    numeric = re.compile(r"^[–\-+0-9.,\[\] e]+$")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "\n".join(
        "<tr>" + "".join(f'<td class="num">{html.escape(c)}</td>' if numeric.match(c) else f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
        for row in rows
    )
    cap = f'<p class="caption">{html.escape(caption)}</p>' if caption else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{REPORT_TABLE_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{cap}\n<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>\n"
        + (f'<p class="caption">{html.escape(note)}</p>\n' if note else "")
        + "</body>\n</html>\n"
    )
