"""Tables from fixture summaries: rows, columns and order, CSV and Markdown."""

import json

import polars as pl
import pytest

from sftrl import tables


def _summary(tmp_path, model, split, acc, n=234):
    s = {
        "model": model, "split": split, "n": n, "solved": round(acc * n), "accuracy": acc,
        "ci_low": acc - 0.05, "ci_high": acc + 0.05, "numbers_correct": 0.5, "format_error": 0.0,
        "mean_turns": 1.0, "heldout_n": 20, "heldout_accuracy": acc / 2,
    }
    path = tmp_path / f"{model}-{split}.json"
    path.write_text(json.dumps(s))
    return path


def test_sft_trajectory_rows_columns_and_order(tmp_path):
    paths = [
        _summary(tmp_path, m, s, a)
        for m, s, a in [
            ("sft-200", "id", 0.9), ("sft-200", "ood", 0.2),
            ("base", "ood", 0.4), ("base", "id", 0.7),
            ("sft-25", "ood", 0.45), ("sft-25", "id", 0.8),
        ]
    ]
    df = tables.sft_trajectory(tables.read_summaries(paths))
    assert df["model"].to_list() == ["base", "sft-25", "sft-200"]  # sorted by step, not by name
    assert df["step"].to_list() == [0, 25, 200]
    assert df["ood_accuracy"].to_list() == [0.4, 0.45, 0.2]
    assert {"id_ci_low", "ood_ci_high", "ood_numbers_correct", "ood_heldout_accuracy"} <= set(df.columns)
    csv, md = tmp_path / "t.csv", tmp_path / "t.md"
    tables.write_table(df, csv, md, tables.TRAJECTORY_MARKDOWN)
    back = pl.read_csv(csv)
    assert back.columns == df.columns and back["ood_accuracy"].to_list() == df["ood_accuracy"].to_list()
    lines = md.read_text().splitlines()
    assert lines[0].startswith("| model | step | ID acc % [95% CI]")
    assert lines[2] == "| base | 0 | 70.0 [65.0, 75.0] | 40.0 [35.0, 45.0] | 50.0 | 50.0 | 20.0 |"
    assert len(lines) == 5


def test_model_step_rejects_other_names():
    assert tables.model_step("base") == 0 and tables.model_step("sft-1600") == 1600
    with pytest.raises(ValueError, match="ppo-800"):
        tables.model_step("ppo-800")


def test_recovery_formula_reproduces_the_studys_figures():
    # PAPER.md §1: Qwen 17.09 -> 19.66 with peak 19.67 is 99.6%; Llama 8.97 -> 16.24 with peak 17.52 is 85.0%
    assert tables.recovery(19.66, 17.09, 19.67) == pytest.approx(99.6, abs=0.05)
    assert tables.recovery(16.24, 8.97, 17.52) == pytest.approx(85.0, abs=0.05)
    assert tables.recovery(0.3, 0.3, 0.3) is None


def test_rl_recovery_rows_and_recovery(tmp_path):
    paths = [
        _summary(tmp_path, m, s, a)
        for m, s, a in [
            ("sft-50", "id", 0.5), ("sft-50", "ood", 0.40),  # the peak
            ("sft-100", "id", 0.7), ("sft-100", "ood", 0.30),
            ("sft-400", "id", 0.9), ("sft-400", "ood", 0.10),
            ("ppo-400", "id", 0.92), ("ppo-400", "ood", 0.25),
            ("ppo-100", "id", 0.75), ("ppo-100", "ood", 0.20),
        ]
    ]
    df = tables.rl_recovery(tables.read_summaries(paths))
    assert df["step"].to_list() == [100, 400]
    assert df["peak_sft_ood"].to_list() == [0.40, 0.40]
    # (0.20 - 0.30) / (0.40 - 0.30) = -100%; (0.25 - 0.10) / (0.40 - 0.10) = 50%
    assert df["recovery_pct"].to_list() == pytest.approx([-100.0, 50.0])
    md = tables.to_markdown(df, tables.RL_RECOVERY_MARKDOWN).splitlines()
    assert md[3] == "| 400 | 90.0 [85.0, 95.0] | 10.0 [5.0, 15.0] | 92.0 [87.0, 97.0] | 25.0 [20.0, 30.0] | 40.0 | 50.0 |"
