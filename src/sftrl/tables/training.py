"""The tables of the training stages: the SFT trajectory, RL recovery per starting checkpoint, the
RL sweep, and the study's stage table (Premax, Moderate, RL; docs/study.md §9)."""

from __future__ import annotations

import json
import math
import os
import re

import polars as pl

from sftrl.study import sft_step
from sftrl.tables.render import ci
from sftrl.tables.summaries import interval_schema, intervals, recovery, wide_by_split


def sft_trajectory(summaries: pl.DataFrame) -> pl.DataFrame:
    """ID and OOD accuracy (with 95% intervals) of the base (step 0) and every SFT checkpoint."""
    wide = wide_by_split(summaries)
    wide = wide.with_columns(pl.col("model").map_elements(sft_step, return_dtype=pl.Int64).alias("step"))
    return wide.select("model", "step", pl.exclude("model", "step")).sort("step")


TRAJECTORY_MARKDOWN = {
    "model": ("raw", "model"),
    "step": ("raw", "step"),
    "ID acc % [95% CI]": ci("id_"),
    "ID 1st attempt %": ("pct", "id_first_accuracy"),
    "OOD acc % [95% CI]": ci("ood_"),
    "OOD 1st attempt % [95% CI]": ci("ood_first_"),
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


def rl_recovery(summaries: pl.DataFrame) -> pl.DataFrame:
    """For each SFT checkpoint RL started from: its SFT and RL accuracy (ID and OOD; all attempts
    and the first attempt), the change RL made (``delta_*``, RL − SFT), the RL model's solve rate
    by turn, and the recovery % = (RL OOD − SFT OOD) / (peak SFT OOD − SFT OOD) (null where the gap
    is not clearly positive, :func:`recovery`), where the peak is the highest OOD accuracy over the
    SFT checkpoints in ``summaries``."""
    wide = wide_by_split(summaries)
    kind = pl.col("model").str.extract(r"^(sft|ppo|grpo)-\d+$", 1)
    wide = wide.with_columns(
        kind.alias("kind"), pl.col("model").str.extract(r"-(\d+)$", 1).cast(pl.Int64).alias("step")
    )
    if wide["kind"].is_null().any():
        bad = wide.filter(pl.col("kind").is_null())["model"].to_list()
        raise ValueError(f"rl_recovery takes sft-<step> and ppo-<step> (or grpo-<step>) summaries; got {bad}")
    sft_rows = wide.filter(pl.col("kind") == "sft").sort(["ood_accuracy", "step"], descending=[True, False])
    peak = sft_rows.row(0, named=True) if sft_rows.height else None
    cols = ["accuracy", "ci_low", "ci_high", "first_accuracy", "first_ci_low", "first_ci_high"]

    def side(name: str, which):
        return wide.filter(which).select(
            "step",
            pl.col("model").alias(f"{name}_model"),
            *[pl.col(f"{sp}_{c}").alias(f"{name}_{sp}_{c}") for sp in ("id", "ood") for c in cols],
            *[pl.col(f"{sp}_solved_by_turn").alias(f"{name}_{sp}_solved_by_turn") for sp in ("id", "ood")],
        )

    rl = side("rl", pl.col("kind") != "sft")
    sft = side("sft", pl.col("kind") == "sft")
    out = rl.join(sft, on="step", how="left").sort("step")
    out = out.with_columns(
        *[(pl.col(f"rl_{sp}_accuracy") - pl.col(f"sft_{sp}_accuracy")).alias(f"delta_{sp}") for sp in ("id", "ood")],
        *[
            (pl.col(f"rl_{sp}_first_accuracy") - pl.col(f"sft_{sp}_first_accuracy")).alias(f"delta_{sp}_first")
            for sp in ("id", "ood")
        ],
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
    "RL model": ("raw", "rl_model"),
    "SFT ID %": ci("sft_id_"),
    "RL ID %": ci("rl_id_"),
    "ΔID": ("dpct", "delta_id"),
    "SFT OOD %": ci("sft_ood_"),
    "RL OOD %": ci("rl_ood_"),
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
        row |= intervals(end, "rl_")
        for split in ("id", "ood"):
            row[f"rl_{split}_first_accuracy"] = end[f"{split}_first_accuracy"]
            row[f"sft_{split}_accuracy"] = start[f"{split}_accuracy"]
            row[f"sft_{split}_first_accuracy"] = start[f"{split}_first_accuracy"]
            row[f"delta_{split}"] = end[f"{split}_accuracy"] - start[f"{split}_accuracy"]
        row["id_kept"] = end["id_accuracy"] >= start["id_ci_low"]
        rows.append(row)
    order = {"default": -1, **{v: i for i, v in enumerate(variants)}}
    df = pl.DataFrame(rows, infer_schema_length=None)
    if df.is_empty():
        return df
    return (
        df.with_columns(pl.col("variant").replace_strict(order, return_dtype=pl.Int64).alias("_v"))
        .sort("_v", "step")
        .drop("_v")
    )


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
    "RL OOD % [95% CI]": ci("rl_ood_"),
    "learns": ("yesno", "learns"),
    "ID kept": ("yesno", "id_kept"),
}


RL_SWEEP_FOOTNOTE = (
    "Train success = share of training episodes solved, mean of the first and of the last 3 updates; "
    "approx-KL = k3 estimate of KL(old ‖ new) per update (mean over its minibatches); epochs = mean PPO "
    "epochs per update (fewer than ppo_epochs when target_kl stopped an update). learns: the last 3 "
    "updates solve more than the first 3; ID kept: RL's ID accuracy is not below the start's 95% interval."
)


STAGES = ("Premax", "Moderate", "RL")


STAGE_DESCRIPTIONS = {
    "Premax": "SFT checkpoint with the highest OOD accuracy",
    "Moderate": "later SFT checkpoint that RL starts from",
    "RL": "RL (PPO, or GRPO: the model's name says) from the moderate checkpoint",
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
        row = {"stage": stage, "model": model, "description": STAGE_DESCRIPTIONS[stage], **intervals(acc[model])}
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
        "stage": pl.String,
        "model": pl.String,
        "description": pl.String,
        **interval_schema(),
        **{f"recovery_{sp}_pct": pl.Float64 for sp in ("id", "ood")},
    }
    return pl.DataFrame(rows, schema=schema)


STAGES_MARKDOWN = {
    "stage": ("raw", "stage"),
    "model": ("raw", "model"),
    "ID acc % [95% CI]": ci("id_"),
    "OOD acc % [95% CI]": ci("ood_"),
    "OOD recovery %": ("raw1", "recovery_ood_pct"),
    "ID recovery %": ("raw1", "recovery_id_pct"),
}
