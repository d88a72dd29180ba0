"""Tables from fixture summaries: rows, columns and order, CSV and Markdown."""

import json

import polars as pl
import pytest

from sftrl import study, tables


def _summary(tmp_path, model, split, acc, n=234):
    s = {
        "model": model,
        "split": split,
        "n": n,
        "solved": round(acc * n),
        "accuracy": acc,
        "ci_low": acc - 0.05,
        "ci_high": acc + 0.05,
        "numbers_correct": 0.5,
        "format_error": 0.0,
        "mean_turns": 1.0,
        "heldout_n": 20,
        "heldout_accuracy": acc / 2,
        "first_accuracy": acc - 0.1,
        "first_ci_low": acc - 0.15,
        "first_ci_high": acc - 0.05,
        "solved_by_turn": [acc - 0.1, 0.1],
        "extra_ten": 0.05,
    }
    path = tmp_path / f"{model}-{split}.json"
    path.write_text(json.dumps(s))
    return path


def test_sft_trajectory_rows_columns_and_order(tmp_path):
    paths = [
        _summary(tmp_path, m, s, a)
        for m, s, a in [
            ("sft-200", "id", 0.9),
            ("sft-200", "ood", 0.2),
            ("base", "ood", 0.4),
            ("base", "id", 0.7),
            ("sft-25", "ood", 0.45),
            ("sft-25", "id", 0.8),
        ]
    ]
    df = tables.sft_trajectory(tables.read_summaries(paths))
    assert df["model"].to_list() == ["base", "sft-25", "sft-200"]  # sorted by step, not by name
    assert df["step"].to_list() == [0, 25, 200]
    assert df["ood_accuracy"].to_list() == [0.4, 0.45, 0.2]
    assert {"id_ci_low", "ood_ci_high", "ood_numbers_correct", "ood_heldout_accuracy"} <= set(df.columns)
    rl = [_summary(tmp_path, "ppo-25", split, 0.5) for split in ("id", "ood")]
    with pytest.raises(Exception, match="ppo-25"):  # only base and sft-<step> are on the trajectory
        tables.sft_trajectory(tables.read_summaries(paths + rl))
    csv, md = tmp_path / "t.csv", tmp_path / "t.md"
    tables.write_table(df, csv, md, tables.TRAJECTORY_MARKDOWN)
    back = pl.read_csv(csv)
    assert back.columns == df.columns and back["ood_accuracy"].to_list() == df["ood_accuracy"].to_list()
    lines = md.read_text().splitlines()
    assert lines[0].startswith("| model | step | ID acc % [95% CI] | ID 1st attempt % | OOD acc % [95% CI]")
    assert lines[2] == (
        "| base | 0 | 70.0 [65.0, 75.0] | 60.0 | 40.0 [35.0, 45.0] | 30.0 [25.0, 35.0] | 30.0 / 10.0 | 0.0 | 50.0 "
        "| 50.0 | 5.0 | 20.0 |"
    )
    assert len(lines) == 5
    tables.write_table(df, csv, md, tables.TRAJECTORY_MARKDOWN, tables.TRAJECTORY_FOOTNOTE)
    text = md.read_text()
    assert text.endswith("\n\n" + tables.TRAJECTORY_FOOTNOTE + "\n") and len(text.splitlines()) == 7


def test_recovery_formula_reproduces_the_studys_figures():
    # docs/study.md §1: Qwen 17.09 -> 19.66 with peak 19.67 is 99.6%; Llama 8.97 -> 16.24 with peak 17.52 is 85.0%
    assert tables.recovery(19.66, 17.09, 19.67) == pytest.approx(99.6, abs=0.05)
    assert tables.recovery(16.24, 8.97, 17.52) == pytest.approx(85.0, abs=0.05)
    assert tables.recovery(0.3, 0.3, 0.3) is None
    assert tables.recovery(0.3, 0.4, 0.2) is None  # the reference below the start: no ratio


@pytest.mark.parametrize(
    "start_high, reference_low, defined",
    [
        (0.15, 0.35, True),  # 0.10 [.., 0.15] vs 0.40 [0.35, ..]: each outside the other's interval
        (0.42, 0.35, False),  # the start's interval reaches the reference
        (0.15, 0.08, False),  # the reference's interval reaches the start
    ],
)
def test_recovery_is_undefined_for_a_gap_within_the_intervals(start_high, reference_low, defined):
    value = tables.recovery(0.25, 0.10, 0.40, start_high, reference_low)
    assert (value == pytest.approx(50.0)) if defined else value is None


def test_rl_recovery_rows_and_recovery(tmp_path):
    paths = [
        _summary(tmp_path, m, s, a)
        for m, s, a in [
            ("sft-50", "id", 0.5),
            ("sft-50", "ood", 0.40),  # the peak
            ("sft-100", "id", 0.7),
            ("sft-100", "ood", 0.30),
            ("sft-400", "id", 0.9),
            ("sft-400", "ood", 0.10),
            ("ppo-400", "id", 0.92),
            ("ppo-400", "ood", 0.25),
            ("ppo-100", "id", 0.75),
            ("ppo-100", "ood", 0.20),
        ]
    ]
    df = tables.rl_recovery(tables.read_summaries(paths))
    assert df["step"].to_list() == [100, 400]
    assert df["peak_sft_ood"].to_list() == [0.40, 0.40]
    # (0.20 - 0.30) / (0.40 - 0.30) = -100%; (0.25 - 0.10) / (0.40 - 0.10) = 50%
    assert df["recovery_pct"].to_list() == pytest.approx([-100.0, 50.0])
    md = tables.to_markdown(df, tables.RL_RECOVERY_MARKDOWN).splitlines()
    assert df["delta_id"].to_list() == pytest.approx([0.05, 0.02]) and df["delta_ood"].to_list() == pytest.approx(
        [-0.1, 0.15]
    )
    assert md[3] == (
        "| 400 | ppo-400 | 90.0 [85.0, 95.0] | 92.0 [87.0, 97.0] | +2.0 | 10.0 [5.0, 15.0] | 25.0 [20.0, 30.0] | +15.0 "
        "| 0.0 → 15.0 | 15.0 / 10.0 | 40.0 | 50.0 |"
    )


def test_peak_ood_prefers_the_earliest_of_equal_peaks(tmp_path):
    paths = [
        _summary(tmp_path, m, "ood", a)
        for m, a in [("sft-25", 0.30), ("sft-100", 0.45), ("sft-50", 0.45), ("sft-800", 0.05)]
    ]
    assert tables.peak_ood(tables.read_summaries(paths)) == {"model": "sft-50", "step": 50, "ood_accuracy": 0.45}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "uvmerge-sft-50-into-sft-800-top0.2",
            {"method": "uv-merge", "donor": "sft-50", "target": "sft-800", "top": 0.2, "bottom": 0.0},
        ),
        (
            "sigmaswap-base-into-sft-8-top0-bottom0.2",
            {"method": "sigma-swap", "donor": "base", "top": 0.0, "bottom": 0.2},
        ),
        ("layerreset-sft-50-into-sft-800-layers0-0.5", {"method": "layer-reset", "layers": "0-0.5", "top": None}),
        ("uvmerge-sft-800-into-ppo-800-top1", {"donor": "sft-800", "target": "ppo-800", "top": 1.0}),
        ("uvmerge-sft-800-into-grpo-800-top1", {"donor": "sft-800", "target": "grpo-800", "top": 1.0}),
    ],
)
def test_parse_edit_name(name, expected):
    parsed = study.parse_edit_name(name)
    assert {k: parsed[k] for k in expected} == expected


def test_parse_edit_name_rejects_other_names():
    with pytest.raises(ValueError, match="not an edited model name"):
        study.parse_edit_name("uvmerge-sft-50-top0.2")


def test_edit_tables_recovery_and_order(tmp_path):
    specs = [
        ("sft-50", 0.9, 0.40),  # donor
        ("sft-800", 0.99, 0.10),  # target
        ("ppo-800", 0.99, 0.20),
        ("uvmerge-sft-50-into-sft-800-top0.5", 0.95, 0.25),
        ("uvmerge-sft-50-into-sft-800-top0.2", 0.97, 0.31),
        ("sigmaswap-sft-50-into-sft-800-top0.2", 0.99, 0.10),
        ("uvmerge-sft-800-into-ppo-800-top1", 0.99, 0.15),
        ("layerreset-sft-50-into-sft-800-layers0.25-0.5", 0.98, 0.12),
        ("layerreset-sft-50-into-sft-800-layers0-0.5", 0.96, 0.30),
        ("layerreset-sft-50-into-sft-800-layers0-0.25", 0.97, 0.28),
    ]
    paths = [p for m, i, o in specs for p in (_summary(tmp_path, m, "id", i), _summary(tmp_path, m, "ood", o))]
    ids = {"layers0-0.25": "0", "layers0-0.5": "0-1", "layers0.25-0.5": "1"}  # of 4 layers
    spectral, layers = tables.edit_tables(tables.read_summaries(paths), ids)
    assert spectral["name"].to_list() == [
        "uvmerge-sft-50-into-sft-800-top0.2",
        "uvmerge-sft-50-into-sft-800-top0.5",
        "sigmaswap-sft-50-into-sft-800-top0.2",
        "uvmerge-sft-800-into-ppo-800-top1",  # the reverse experiment comes last
    ]
    # (0.31 - 0.10) / (0.40 - 0.10) = 70%; reverse: the donor (0.10) is below the target (0.20): no ratio
    assert spectral["recovery_ood_pct"].to_list()[:3] == pytest.approx([70.0, 50.0, 0.0])
    assert spectral["recovery_ood_pct"][3] is None
    assert spectral["recovery_id_pct"].to_list() == [None] * 4  # ID: the donor (0.90) below the target
    assert layers["layers"].to_list() == ["0-0.25", "0-0.5", "0.25-0.5"]
    assert layers["layer_ids"].to_list() == ["0", "0-1", "1"]
    assert layers["recovery_ood_pct"].to_list() == pytest.approx([60.0, 66.667, 6.667], abs=1e-3)
    md = tables.to_markdown(layers, tables.LAYER_RESET_MARKDOWN).splitlines()
    assert md[2].startswith(
        "| 0-0.25 | 0 | sft-50 → sft-800 | 97.0 [92.0, 102.0] | 28.0 [23.0, 33.0] | 40.0 | 10.0 | 60.0 |"
    )


def test_edit_tables_need_the_donor_summary(tmp_path):
    paths = [_summary(tmp_path, "uvmerge-sft-50-into-sft-800-top0.2", s, 0.3) for s in ("id", "ood")]
    paths += [_summary(tmp_path, "sft-800", s, 0.3) for s in ("id", "ood")]
    with pytest.raises(ValueError, match="donor sft-50"):
        tables.edit_tables(tables.read_summaries(paths))


def test_spectrum_summary_groups_by_type_and_band(tmp_path):
    rows = []
    for layer in (0, 1):
        for t in ("v", "q"):
            for band, d in (("tail", 3.0), ("head", 1.0), ("bulk", 2.0)):
                rows.append(
                    {
                        "matrix": f"model.layers.{layer}.self_attn.{t}_proj.weight",
                        "layer": layer,
                        "type": t,
                        "band": band,
                        "mean_rel_dsigma": d * 1e-3 * (layer + 1),
                        "mean_angle_u": d * 10.0,
                        "mean_angle_v": d * 20.0,
                    }
                )
    path = tmp_path / "base--sft-8.parquet"
    pl.DataFrame(rows).write_parquet(path)
    df = tables.spectrum_summary([path])
    assert df.select("type", "band").rows() == [
        ("q", "head"),
        ("q", "bulk"),
        ("q", "tail"),
        ("v", "head"),
        ("v", "bulk"),
        ("v", "tail"),
    ]
    assert df["matrices"].to_list() == [2] * 6
    assert df["mean_rel_dsigma"][0] == pytest.approx(1.5e-3)  # mean of 1e-3 and 2e-3
    assert df["a"][0] == "base" and df["b"][0] == "sft-8"


# --- stage table -------------------------------------------------------------------------------


def _stage_paths(tmp_path):
    specs = [
        ("sft-50", 0.50, 0.40),  # premax
        ("sft-400", 0.90, 0.10),  # moderate
        ("ppo-400", 0.92, 0.25),  # RL
        ("sft-100", 0.70, 0.30),  # not a stage: ignored
    ]
    return [p for m, i, o in specs for p in (_summary(tmp_path, m, "ood", o), _summary(tmp_path, m, "id", i))]


def test_stage_table_rows_columns_and_recovery(tmp_path):
    df = tables.stage_table(
        tables.read_summaries(_stage_paths(tmp_path)), premax="sft-50", moderate="sft-400", rl="ppo-400"
    )
    assert df["stage"].to_list() == ["Premax", "Moderate", "RL"]  # the study's order, not alphabetical
    assert df["model"].to_list() == ["sft-50", "sft-400", "ppo-400"]
    assert df.columns[:3] == ["stage", "model", "description"]
    assert {"id_accuracy", "id_ci_low", "id_ci_high", "ood_accuracy", "ood_ci_low", "ood_ci_high"} <= set(df.columns)
    # OOD: (0.25 - 0.10) / (0.40 - 0.10) = 50%; ID: Premax (0.50) is below Moderate (0.90): no ratio
    assert df["recovery_ood_pct"].to_list()[:2] == [None, None]
    assert df["recovery_ood_pct"][2] == pytest.approx(50.0)
    assert df["recovery_id_pct"][2] is None
    csv, md = tmp_path / "stages.csv", tmp_path / "stages.md"
    tables.write_table(df, csv, md, tables.STAGES_MARKDOWN)
    lines = md.read_text().splitlines()
    assert lines[0] == "| stage | model | ID acc % [95% CI] | OOD acc % [95% CI] | OOD recovery % | ID recovery % |"
    assert lines[2] == "| Premax | sft-50 | 50.0 [45.0, 55.0] | 40.0 [35.0, 45.0] | – | – |"
    assert lines[4] == "| RL | ppo-400 | 92.0 [87.0, 97.0] | 25.0 [20.0, 30.0] | 50.0 | – |"
    assert pl.read_csv(csv)["stage"].to_list() == ["Premax", "Moderate", "RL"]


def test_stage_table_reproduces_the_papers_llama_row(tmp_path):
    # docs/study.md §9, Llama: Premax OOD 17.52, Moderate 8.97, RL 16.24 -> 85.0% recovery
    specs = [("sft-140", 0.2479, 0.1752), ("sft-1100", 0.6838, 0.0897), ("ppo-1100", 0.7179, 0.1624)]
    paths = [p for m, i, o in specs for p in (_summary(tmp_path, m, "id", i), _summary(tmp_path, m, "ood", o))]
    df = tables.stage_table(tables.read_summaries(paths), "sft-140", "sft-1100", "ppo-1100")
    assert df["recovery_ood_pct"][2] == pytest.approx(85.0, abs=0.05)


def test_stage_table_without_a_gap_has_no_recovery(tmp_path):
    paths = [
        p for m in ("sft-50", "ppo-50") for p in (_summary(tmp_path, m, "id", 0.5), _summary(tmp_path, m, "ood", 0.3))
    ]
    df = tables.stage_table(tables.read_summaries(paths), "sft-50", "sft-50", "ppo-50")
    assert df["recovery_ood_pct"].to_list() == [None, None, None]


def test_stage_table_names_the_missing_model(tmp_path):
    with pytest.raises(ValueError, match="RL model ppo-800"):
        tables.stage_table(tables.read_summaries(_stage_paths(tmp_path)), "sft-50", "sft-400", "ppo-800")


def test_edit_tables_sort_the_reverse_experiment_by_step(tmp_path):
    specs = [
        ("sft-25", 0.8, 0.3),
        ("ppo-25", 0.8, 0.2),
        ("sft-100", 0.9, 0.2),
        ("ppo-100", 0.9, 0.1),
        ("uvmerge-sft-100-into-ppo-100-top1", 0.9, 0.15),
        ("uvmerge-sft-25-into-ppo-25-top1", 0.8, 0.25),
    ]
    paths = [p for m, i, o in specs for p in (_summary(tmp_path, m, "id", i), _summary(tmp_path, m, "ood", o))]
    spectral, _ = tables.edit_tables(tables.read_summaries(paths))
    assert spectral["target"].to_list() == ["ppo-25", "ppo-100"]  # numerically, not "ppo-100" < "ppo-25"


# --- spectra: pair order and the per-index profile ---------------------------------------------


def _index_table(path, n=10, layers=(0, 1), types=("q", "down"), k=2, scale=1.0):
    rows = []
    for layer in layers:
        for t in types:
            for i in range(n):
                band = "head" if i < 1 else ("tail" if i >= n - 1 else "bulk")
                rows.append(
                    {
                        "matrix": f"model.layers.{layer}.{'mlp' if t == 'down' else 'self_attn'}.{t}_proj.weight",
                        "layer": layer,
                        "type": t,
                        "index": i,
                        "band": band,
                        "sigma_a": 1.0,
                        "sigma_b": 1.0,
                        "rel_dsigma": scale * (-1) ** i * (i + 1) * (layer + 1) * 1e-3,
                        "angle_u": float(i + layer) if i < k else None,
                        "angle_v": float(2 * i) if i < k else None,
                    }
                )
    pl.DataFrame(rows).write_parquet(path)
    return path


def test_spectrum_profile_averages_layers_and_orders_pairs(tmp_path):
    paths = [
        _index_table(tmp_path / "sft-8--ppo-8.index.parquet"),
        _index_table(tmp_path / "sft-4--sft-8.index.parquet"),
        _index_table(tmp_path / "base--sft-8.index.parquet"),
    ]
    df = tables.spectrum_profile(paths)
    assert df["pair"].unique(maintain_order=True).to_list() == ["base → sft-8", "sft-4 → sft-8", "sft-8 → ppo-8"]
    one = df.filter(pl.col("pair") == "base → sft-8")
    assert one["type"].unique(maintain_order=True).to_list() == ["q", "down"]  # MATRIX_TYPES order
    q = one.filter(pl.col("type") == "q")
    assert q["index_start"].to_list() == list(range(10)) and q["n"].to_list() == [10] * 10
    # |Δσ|/σ at index 0: mean over layers of 1e-3 and 2e-3
    assert q["abs_rel_dsigma"][0] == pytest.approx(1.5e-3)
    assert q["angle_u"].to_list()[:3] == [0.5, 1.5, None]  # mean over layers; null past the top-k
    assert q["band"].to_list()[0] == "head" and q["band"].to_list()[-1] == "tail"
    assert q["rel_start"][3] == pytest.approx(0.3) and q["rel_index"][3] == pytest.approx(0.35)
    assert q["matrices"].to_list() == [2] * 10


def test_spectrum_profile_bins_long_spectra(tmp_path):
    path = _index_table(tmp_path / "base--sft-8.index.parquet", n=10, types=("q",))
    df = tables.spectrum_profile([path], max_points=4)
    assert df["index_start"].to_list() == [0, 3, 5, 8]  # bins index * 4 // 10
    assert df["index_stop"].to_list() == [3, 5, 8, 10]
    assert df["rel_stop"][-1] == pytest.approx(1.0)
    # bin 0 averages |Δσ|/σ of indices 0..2 over both layers: (1+2+3)/3 * 1.5e-3
    assert df["abs_rel_dsigma"][0] == pytest.approx(3e-3)


def test_spectrum_profile_errors_name_the_file(tmp_path):
    bad = tmp_path / "base-sft-8.index.parquet"
    _index_table(bad)
    with pytest.raises(ValueError, match="base-sft-8.index.parquet: expected a spectrum file"):
        tables.spectrum_profile([bad])
    thin = tmp_path / "base--sft-8.index.parquet"
    pl.DataFrame({"matrix": ["m"], "index": [0]}).write_parquet(thin)
    with pytest.raises(ValueError, match=r"base--sft-8.index.parquet: missing columns \['type'"):
        tables.spectrum_profile([thin])


def test_spectrum_summary_orders_pairs_whatever_the_input_order(tmp_path):
    paths = []
    for a, b in (("sft-8", "ppo-8"), ("base", "sft-8"), ("base", "sft-4")):
        path = tmp_path / f"{a}--{b}.parquet"
        pl.DataFrame(
            [
                {
                    "matrix": "model.layers.0.self_attn.q_proj.weight",
                    "layer": 0,
                    "type": "q",
                    "band": "head",
                    "mean_rel_dsigma": 1e-3,
                    "mean_angle_u": 1.0,
                    "mean_angle_v": 1.0,
                }
            ]
        ).write_parquet(path)
        paths.append(path)
    df = tables.spectrum_summary(paths)
    assert df.select("a", "b").rows() == [("base", "sft-4"), ("base", "sft-8"), ("sft-8", "ppo-8")]
    assert tables.spectrum_summary(list(reversed(paths))).equals(df)


# --- tables in the report ------------------------------------------------------------------------


def test_report_page_shows_the_tables_data_through_its_view_and_loads_nothing():
    df = pl.DataFrame(
        {
            "stage": ["Premax", "RL <b>"],
            "model": ["sft-10", "ppo-400"],
            "id_accuracy": [0.5, 0.6],
            "id_ci_low": [0.4, 0.5],
            "id_ci_high": [0.6, 0.7],
            "ood_accuracy": [0.188, None],
            "ood_ci_low": [0.143, None],
            "ood_ci_high": [0.243, None],
            "recovery_ood_pct": [None, 40.0],
            "recovery_id_pct": [None, None],
        }
    )
    page = tables.report_page(df, tables.STAGES_MARKDOWN, "Stage table", caption="Source: x.csv", footnote="Note.")
    assert "<th>stage</th><th>model</th><th>ID acc % [95% CI]</th>" in page
    assert '<td class="num">18.8 [14.3, 24.3]</td>' in page
    assert "<td>RL &lt;b&gt;</td>" in page  # escaped
    assert '<td class="num">–</td>' in page and '<p class="caption">Note.</p>' in page
    assert "<script" not in page and "http" not in page
    # the same cells as the Markdown view
    md = tables.to_markdown(df, tables.STAGES_MARKDOWN)
    assert "| Premax | sft-10 | 50.0 [40.0, 60.0] | 18.8 [14.3, 24.3] | – | – |" in md


# --- the RL sweep ------------------------------------------------------------------------------


def _metrics(success: list[float], kl: float = 0.02) -> list[dict]:
    return [
        {"update": u, "charts/success_rate": s, "losses/approx_kl": kl * u, "losses/epochs": 4, "charts/entropy": 0.1}
        for u, s in enumerate(success, start=1)
    ]


def test_rl_sweep_rows_learning_and_id_kept(tmp_path):
    specs = [("sft-50", 0.60, 0.20), ("ppo-50", 0.70, 0.22), ("ppo-50-lr1e-4", 0.50, 0.15)]
    paths = [p for m, i, o in specs for p in (_summary(tmp_path, m, "id", i), _summary(tmp_path, m, "ood", o))]
    metrics = {
        "ppo-50-lr1e-4": _metrics([0.6, 0.6, 0.6, 0.5, 0.5, 0.5], kl=0.3),  # falls
        "ppo-50": _metrics([0.6, 0.6, 0.6, 0.7, 0.7, 0.8]),  # rises
    }
    df = tables.rl_sweep(tables.read_summaries(paths), metrics, {"lr1e-4": {"lr": 1e-4}})
    assert df["variant"].to_list() == ["default", "lr1e-4"]  # the rl: settings first
    assert df["settings"].to_list() == ["(the study's rl: settings)", "lr=0.0001"]
    assert df["learns"].to_list() == [True, False]
    assert df["success_first"].to_list() == pytest.approx([0.6, 0.6]) and df["success_last"][0] == pytest.approx(
        0.7333, abs=1e-4
    )
    assert df["approx_kl_max"].to_list() == pytest.approx([0.12, 1.8])
    # ID kept: 0.70 >= the start's lower bound 0.55; 0.50 is below it
    assert df["id_kept"].to_list() == [True, False]
    assert df["delta_ood"].to_list() == pytest.approx([0.02, -0.05])
    md = tables.to_markdown(df, tables.RL_SWEEP_MARKDOWN).splitlines()
    assert md[2].startswith(
        "| default | (the study's rl: settings) | 50 | 60.0 → 73.3 | 0.070 / 0.120 | 4.00 | 60.0 → 70.0 | +10.0 |"
    )
    assert md[2].endswith("| yes | yes |") and md[3].endswith("| no | no |")


def test_rl_sweep_needs_the_start_summary(tmp_path):
    paths = [_summary(tmp_path, "ppo-50", s, 0.5) for s in ("id", "ood")]
    with pytest.raises(ValueError, match="sft-50"):
        tables.rl_sweep(tables.read_summaries(paths), {"ppo-50": _metrics([0.5] * 3)}, {})


# --- across seeds (sftrl.tables.seeds) -------------------------------------------------------


def _trajectory(tmp_path, seed, ood):
    """The sft-trajectory table of one replicate whose OOD accuracies are ``ood`` (base, sft-5)."""
    paths = [
        _summary(tmp_path / f"seed{seed}", m, s, a)
        for m, acc in zip(("base", "sft-5"), ood, strict=True)
        for s, a in (("id", 0.5), ("ood", acc))
    ]
    return tables.sft_trajectory(tables.read_summaries(paths))


@pytest.fixture
def seed_dirs(tmp_path):
    for seed in range(3):
        (tmp_path / f"seed{seed}").mkdir()
    return tmp_path


def test_t_interval_matches_students_t():
    stats = tables.t_interval([0.10, 0.20, 0.30])
    assert stats["mean"] == pytest.approx(0.2) and stats["sd"] == pytest.approx(0.1) and stats["n"] == 3
    half = 4.303 * 0.1 / 3**0.5  # t(0.975, 2) = 4.303
    assert (stats["low"], stats["high"]) == (pytest.approx(0.2 - half), pytest.approx(0.2 + half))
    assert tables.t_interval([0.4, None]) == {"mean": 0.4, "sd": None, "n": 1, "low": None, "high": None}
    assert tables.t_interval([])["mean"] is None


def test_one_seed_gives_that_seeds_table_unchanged(seed_dirs):
    one = _trajectory(seed_dirs, 0, (0.1, 0.3))
    combined, by_seed = tables.combine_seeds({0: one}, keys=("model", "step"))
    assert combined.equals(one) and not tables.is_combined(combined)
    assert by_seed["seed"].to_list() == [0, 0] and by_seed.drop("seed").equals(one)
    view, footnote = tables.table_view("sft-trajectory", combined)
    assert (view, footnote) == tables.VIEWS["sft-trajectory"]


def test_seeds_combine_into_means_intervals_and_each_seeds_value(seed_dirs):
    frames = {s: _trajectory(seed_dirs, s, (0.1 + s / 10, 0.3)) for s in (2, 0, 1)}
    combined, by_seed = tables.combine_seeds(frames, keys=("model", "step"))
    assert combined["model"].to_list() == ["base", "sft-5"] and combined["seeds"].to_list() == [3, 3]
    base = combined.row(0, named=True)
    stats = tables.t_interval([0.1, 0.2, 0.3])
    assert base["ood_accuracy"] == pytest.approx(0.2)
    assert (base["ood_ci_low"], base["ood_ci_high"]) == (pytest.approx(stats["low"]), pytest.approx(stats["high"]))
    assert base["ood_accuracy_sd"] == pytest.approx(0.1) and base["ood_accuracy_n"] == 3
    assert base["ood_accuracy_by_seed"] == "0.1 / 0.2 / 0.30000000000000004"  # seed order, full precision
    same = combined.row(1, named=True)  # every seed the same: a zero-width interval
    assert same["ood_ci_low"] == pytest.approx(0.3) == same["ood_ci_high"]
    assert by_seed["seed"].to_list() == [0, 1, 2, 0, 1, 2] and by_seed.height == 6
    view, footnote = tables.table_view("sft-trajectory", combined)
    headers, rows = tables.cells(combined, view)
    assert "OOD acc % mean [95% CI over seeds]" in headers and headers[-1] == "seeds"
    cell = rows[0][headers.index("OOD acc % per seed")]
    assert cell == "10.0 / 20.0 / 30.0" and "t-interval over seeds" in footnote


def test_seeds_keep_rows_by_their_keys_and_join_differing_text(tmp_path):
    """A row is the same row in every seed by its keys; text that differs (the donor, the peak)
    is joined in seed order, measures get their own interval columns, yes/no needs every seed."""

    def edits(donor, recovery, reverse_ok):
        return pl.DataFrame(
            {
                "name": [f"uvmerge-{donor}-into-sft-400-top0.2", "uvmerge-sft-50-into-ppo-50-top1"],
                "method": ["uv-merge", "uv-merge"],
                "donor": [donor, "sft-50"],
                "target": ["sft-400", "ppo-50"],
                "top": [0.2, 1.0],
                "bottom": [0.0, 0.0],
                "reverse": [False, True],
                "ok": [True, reverse_ok],
                "recovery_ood_pct": [recovery, None],
            }
        )

    keys = study.RESULT["uv-merge"].keys
    combined, _ = tables.combine_seeds(
        {0: edits("sft-10", 40.0, True), 1: edits("sft-25", 20.0, False)}, keys, ("recovery_ood_pct",)
    )
    first, reverse = combined.iter_rows(named=True)
    assert first["donor"] == "sft-10 / sft-25" and reverse["donor"] == "sft-50"
    assert first["recovery_ood_pct"] == pytest.approx(30.0) and first["recovery_ood_pct_n"] == 2
    assert first["recovery_ood_pct_ci_low"] == pytest.approx(30.0 - 12.706 * 10.0)
    assert reverse["recovery_ood_pct"] is None and reverse["recovery_ood_pct_by_seed"] == "– / –"
    assert first["ok"] is True and reverse["ok"] is False
    # a row only one seed has is kept, marked by its count, without an interval
    only = edits("sft-25", 20.0, True).head(1)
    combined, _ = tables.combine_seeds({0: edits("sft-10", 40.0, True), 1: only}, keys, ("recovery_ood_pct",))
    assert combined["seeds"].to_list() == [2, 1] and combined["name"].to_list()[1].endswith("ppo-50-top1")


def test_seeds_average_lists_of_numbers_number_by_number():
    """The shares solved on each turn are one text per seed: their mean is taken turn by turn,
    not the texts joined (which would read as 10 turns of 2 seeds)."""

    def turns(text):
        return pl.DataFrame({"model": ["sft-5"], "step": [5], "ood_solved_by_turn": [text]})

    keys = ("model", "step")
    combined, _ = tables.combine_seeds({0: turns("9.4 / 1.7 / 0.0"), 1: turns("18.0 / 4.3 / 1.0")}, keys)
    assert combined["ood_solved_by_turn"].to_list() == ["13.7 / 3.0 / 0.5"]
    # lists of different lengths are not averaged
    combined, _ = tables.combine_seeds({0: turns("9.4 / 1.7"), 1: turns("17.9 / 4.3 / 1.0")}, keys)
    assert combined["ood_solved_by_turn"].to_list() == ["9.4 / 1.7 / 17.9 / 4.3 / 1.0"]


def test_combine_seeds_names_a_missing_key():
    with pytest.raises(ValueError, match=r"seed 3 has no key columns \['step'\]"):
        tables.combine_seeds({3: pl.DataFrame({"model": ["base"]})}, keys=("model", "step"))


def test_every_seeded_table_has_keys_its_rows_have(tmp_path):
    for name, result in study.SEEDED_RESULT.items():
        assert result.keys, name
    assert "benchmarks" not in study.SEEDED_RESULT  # the job records are one table of every seed's jobs


def test_the_benchmark_table_names_each_records_seed(tmp_path):
    def record(path, seconds):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"s\th:m:s\tmax_rss\tcpu_time\n{seconds}\t0:00:01\t100.0\t{seconds}\n")
        return path

    shared = [record(tmp_path / "benchmarks" / "evaluate" / "base.tsv", 1.0)]
    seed1 = [record(tmp_path / "seed-1" / "benchmarks" / "sft" / "sft-5.tsv", 2.0)]
    seed0 = [record(tmp_path / "seed-0" / "benchmarks" / "sft" / "sft-5.tsv", 3.0)]
    df = tables.benchmark_table({None: shared, 1: seed1, 0: seed0})
    assert df.select("stage", "job", "seed").rows() == [
        ("sft", "sft-5", 0),
        ("sft", "sft-5", 1),
        ("evaluate", "base", None),
    ]
    assert df["seconds"].to_list() == [3.0, 2.0, 1.0]


def test_findings_measure_each_seed_at_the_peak_of_the_mean_curve(seed_dirs):
    # seed 0 peaks at sft-5, seeds 1 and 2 at sft-10; the mean curve peaks at sft-10
    def traj(seed, ood):
        paths = [
            _summary(seed_dirs / f"seed{seed}", m, s, a)
            for m, acc in zip(("base", "sft-5", "sft-10", "sft-20"), ood, strict=True)
            for s, a in (("id", 0.5 + acc), ("ood", acc))
        ]
        return tables.sft_trajectory(tables.read_summaries(paths))

    def spectrum(dsigma, angle):
        return pl.DataFrame(
            {
                "a": ["base", "base"],
                "b": ["sft-20", "sft-20"],
                "type": ["q", "k"],
                "band": ["head", "head"],
                "matrices": [2, 2],
                "mean_rel_dsigma": [dsigma, dsigma],
                "mean_angle_u": [angle, angle],
                "mean_angle_v": [angle, angle],
            }  # fmt: skip
        )

    per_seed = {
        0: {"sft-trajectory": traj(0, (0.05, 0.20, 0.19, 0.06)), "spectrum": spectrum(0.02, 10.0)},
        1: {"sft-trajectory": traj(1, (0.07, 0.14, 0.25, 0.08)), "spectrum": spectrum(0.03, 12.0)},
        2: {"sft-trajectory": traj(2, (0.06, 0.17, 0.22, 0.07)), "spectrum": spectrum(0.025, 11.0)},
    }
    df = tables.findings(per_seed)
    rows = {r["quantity"]: r for r in df.iter_rows(named=True)}
    rise = rows["OOD: sft-10 − base (the rise to the peak of the mean curve)"]
    assert rise["mean"] == pytest.approx(16.0) and rise["seeds"] == 3
    assert rise["by_seed"] == "14.0 / 18.0 / 16.0" and rise["verdict"] == "yes: above 0"
    assert rise["ci_low"] == pytest.approx(16.0 - 4.303 * 2.0 / 3**0.5)
    fall = rows["OOD: sft-10 − sft-20 (the fall after it)"]
    assert fall["by_seed"] == "13.0 / 17.0 / 15.0" and fall["verdict"] == "yes: above 0"
    assert rows["each seed's own peak-OOD checkpoint (SFT step)"]["by_seed"] == "5.0 / 10.0 / 10.0"
    two = tables.findings({s: per_seed[s] for s in (0, 1)})  # two seeds: t(0.975, 1) = 12.7, wide
    assert two["verdict"][0] == "not shown: interval holds 0"
    ratio = rows["head band, base → sft-20: sin(angle) / (|Δσ|/σ)"]
    import math

    values = [math.sin(math.radians(a)) / d for a, d in ((10.0, 0.02), (12.0, 0.03), (11.0, 0.025))]
    assert ratio["mean"] == pytest.approx(sum(values) / 3) and ratio["verdict"].startswith("yes: above 1")
    assert {r["finding"] for r in df.iter_rows(named=True)} == {
        tables.findings.__globals__["FINDINGS"][i] for i in (0, 2)
    }
    assert tables.findings({0: per_seed[0]})["verdict"][0] == "one seed: no interval"
    md = tables.to_markdown(df, *tables.VIEWS["findings"])
    assert "| 16.0 [11.0, 21.0] | 14.0 / 18.0 / 16.0 | yes: above 0 |" in md


def test_verdicts_compare_the_interval_with_no_effect():
    from sftrl.tables.findings import verdict

    assert verdict(tables.t_interval([2.0, 2.5, 3.0])) == "yes: above 0"  # 2.5 ± 1.24
    assert verdict(tables.t_interval([1.0, 2.0, 3.0])) == "not shown: interval holds 0"  # 2 ± 2.48
    assert verdict(tables.t_interval([-2.0, -2.5, -3.0])) == "no (reversed): below 0"
    assert verdict(tables.t_interval([0.4])) == "one seed: no interval"
    assert verdict(tables.t_interval([None, None])) == "undefined in every seed"
    assert verdict(tables.t_interval([5.0, 5.5, 6.0]), null=1.0) == "yes: above 1"
