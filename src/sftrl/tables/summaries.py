"""Evaluation summaries (``eval/<model>/<split>.json``) as frames, and what every result table
shares: one row per model with ``<split>_<field>`` columns, accuracies with their 95% intervals,
the recovery % and the peak-OOD checkpoint."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import polars as pl

from sftrl.constants import INTERVAL
from sftrl.study import SPLITS, sft_step

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
    schema = {
        "model": pl.String,
        "split": pl.String,
        **{k: pl.Float64 for k in SUMMARY_FIELDS},
        "solved_by_turn": pl.String,
    }
    return pl.DataFrame(rows, schema=schema)


def wide_by_split(long: pl.DataFrame) -> pl.DataFrame:
    """One row per model, ``<split>_<field>`` columns (id_accuracy, ood_accuracy, ...)."""
    parts = []
    for split in ("id", "ood"):
        part = long.filter(pl.col("split") == split).drop("split")
        parts.append(part.rename({k: f"{split}_{k}" for k in (*SUMMARY_FIELDS, "solved_by_turn")}))
    return parts[0].join(parts[1], on="model", how="full", coalesce=True)


def intervals(row: dict, prefix: str = "", splits=SPLITS) -> dict:
    """The accuracy and 95% interval of each split of a wide row (:func:`wide_by_split`), as
    ``<prefix><split>_accuracy``, ``_ci_low``, ``_ci_high``."""
    return {f"{prefix}{sp}_{c}": row[f"{sp}_{c}"] for sp in splits for c in INTERVAL}


def interval_schema(prefix: str = "", splits=SPLITS) -> dict:
    """The polars schema of :func:`intervals`' columns."""
    return {f"{prefix}{sp}_{c}": pl.Float64 for sp in splits for c in INTERVAL}


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


def peak_ood(summaries: pl.DataFrame) -> dict:
    """The SFT checkpoint with the highest OOD accuracy; ties go to the earliest step."""
    ood = summaries.filter(pl.col("split") == "ood").with_columns(
        pl.col("model").map_elements(sft_step, return_dtype=pl.Int64).alias("step")
    )
    if ood.is_empty():
        raise ValueError("peak_ood needs OOD summaries of SFT checkpoints")
    best = ood.sort(["accuracy", "step"], descending=[True, False]).row(0, named=True)
    return {"model": best["model"], "step": best["step"], "ood_accuracy": best["accuracy"]}
