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
