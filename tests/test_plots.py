"""Charts from fixture tables: their Vega-Lite specs name the expected fields and encodings, the
written files are real (offline HTML, PNG, SVG), identical when written twice, and a chart's HTML
renders in headless Chromium without console errors."""

import re

import altair as alt
import polars as pl
import pytest

from sftrl import plots, tables


def _summary_rows(specs):
    """specs: (model, id accuracy, ood accuracy) → a long summaries frame as read_summaries gives."""
    rows = []
    for model, id_acc, ood_acc in specs:
        for split, acc in (("id", id_acc), ("ood", ood_acc)):
            rows.append(
                {
                    "model": model,
                    "split": split,
                    "accuracy": acc,
                    "ci_low": acc - 0.05,
                    "ci_high": acc + 0.05,
                    "numbers_correct": 0.5,
                    "format_error": 0.0,
                    "mean_turns": 1.0,
                    "heldout_n": 10.0,
                    "heldout_accuracy": acc,
                    "first_accuracy": acc - 0.02,
                    "first_ci_low": acc - 0.07,
                    "first_ci_high": acc + 0.03,
                    "extra_ten": 0.1,
                    "solved_by_turn": f"{100 * acc - 2:.1f} / 2.0",
                }
            )
    schema = {
        "model": pl.String,
        "split": pl.String,
        **{k: pl.Float64 for k in tables.SUMMARY_FIELDS},
        "solved_by_turn": pl.String,
    }
    return pl.DataFrame(rows, schema=schema)


SUMMARIES = _summary_rows(
    [
        ("base", 0.80, 0.25),
        ("sft-25", 0.81, 0.19),
        ("sft-50", 0.88, 0.14),
        ("sft-400", 0.92, 0.06),
        ("ppo-25", 0.78, 0.17),
        ("ppo-50", 0.80, 0.13),
        ("ppo-400", 0.91, 0.05),
        ("uvmerge-sft-25-into-sft-400-top0.2", 0.78, 0.14),
        ("uvmerge-sft-25-into-sft-400-top0.5", 0.73, 0.19),
        ("uvmerge-sft-25-into-sft-400-top0-bottom0.2", 0.92, 0.07),
        ("sigmaswap-sft-25-into-sft-400-top0.2", 0.91, 0.06),
        ("uvmerge-sft-50-into-ppo-50-top1", 0.88, 0.14),
        ("layerreset-sft-25-into-sft-400-layers0-0.25", 0.91, 0.10),
        ("layerreset-sft-25-into-sft-400-layers0-0.5", 0.86, 0.10),
    ]
)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("spectra")
    traj = tables.sft_trajectory(SUMMARIES.filter(pl.col("model").str.contains(r"^(base|sft-\d+)$")))
    rl = tables.rl_recovery(SUMMARIES.filter(pl.col("model").str.contains(r"^(sft|ppo)-\d+$")))
    stages = tables.stage_table(SUMMARIES, "sft-25", "sft-400", "ppo-400")
    uv, layers = tables.edit_tables(SUMMARIES, {"layers0-0.25": "0", "layers0-0.5": "0-1"})
    index_paths, summary_paths = [], []
    for a, b in (("base", "sft-400"), ("sft-25", "sft-400"), ("sft-400", "ppo-400")):
        rows, summary = [], []
        for layer in (0, 1):
            for t in ("q", "down"):
                name = f"model.layers.{layer}.{'mlp' if t == 'down' else 'self_attn'}.{t}_proj.weight"
                for i in range(20):
                    band = "head" if i < 2 else ("tail" if i >= 18 else "bulk")
                    rows.append(
                        {
                            "matrix": name,
                            "layer": layer,
                            "type": t,
                            "index": i,
                            "band": band,
                            "sigma_a": 1.0,
                            "sigma_b": 1.0,
                            "rel_dsigma": (i + 1) * 1e-3,
                            "angle_u": float(i) if i < 4 else None,
                            "angle_v": float(i) / 2 if i < 4 else None,
                        }
                    )
                for band, angle in (("head", 5.0), ("bulk", 1.0), ("tail", 8.0)):
                    summary.append(
                        {
                            "matrix": name,
                            "layer": layer,
                            "type": t,
                            "band": band,
                            "mean_rel_dsigma": 1e-3,
                            "mean_angle_u": angle,
                            "mean_angle_v": angle + 1,
                        }
                    )
        index_paths.append(tmp / f"{a}--{b}.index.parquet")
        pl.DataFrame(rows).write_parquet(index_paths[-1])
        summary_paths.append(tmp / f"{a}--{b}.parquet")
        pl.DataFrame(summary).write_parquet(summary_paths[-1])
    profile = tables.spectrum_profile(index_paths)
    spectrum = tables.spectrum_summary(summary_paths)
    return {
        "traj": traj,
        "rl": rl,
        "stages": stages,
        "uv": uv,
        "layers": layers,
        "profile": profile,
        "spectrum": spectrum,
    }


def _layers(spec: dict) -> list[dict]:
    """Every unit spec (mark + encoding) inside a layered / faceted spec."""
    out = []
    stack = [spec]
    while stack:
        s = stack.pop()
        if "mark" in s:
            out.append(s)
        stack.extend(s.get("layer", []))
        if "spec" in s:
            stack.append(s["spec"])
    return out


def _mark(layer: dict) -> str:
    m = layer["mark"]
    return m if isinstance(m, str) else m["type"]


def _by_mark(spec: dict, mark: str) -> list[dict]:
    return [layer for layer in _layers(spec) if _mark(layer) == mark]


def _data(spec: dict) -> list[dict]:
    """The chart's inline rows (altair moves them to the top-level ``datasets``)."""
    data = spec["data"]
    return spec["datasets"][data["name"]] if "name" in data else data["values"]


def _has_intervals(spec: dict) -> None:
    bars = _by_mark(spec, "errorbar")
    assert bars, "no error bars"
    for bar in bars:
        assert bar["encoding"]["y"]["field"] == "ci_low" and bar["encoding"]["y2"]["field"] == "ci_high"


def test_sft_trajectory_spec(frames):
    chart = plots.sft_trajectory(frames["traj"], frames["rl"])
    assert isinstance(chart, alt.LayerChart)
    spec = chart.to_dict()
    (line,) = _by_mark(spec, "line")
    assert line["encoding"]["x"]["field"] == "step" and line["encoding"]["y"]["field"] == "accuracy"
    assert line["encoding"]["color"]["field"] == "split"
    (point,) = _by_mark(spec, "point")
    assert point["encoding"]["shape"]["field"] == "stage"  # PPO results as separate marks
    _has_intervals(spec)
    rows = _data(spec)
    ppo = [r for r in rows if r["stage"] == "RL from this step"]
    assert {(r["model"], r["step"], r["split"]) for r in ppo} >= {("ppo-400", 400, "OOD"), ("ppo-25", 25, "ID")}
    base = next(r for r in rows if r["model"] == "base" and r["split"] == "OOD")
    assert base["step"] == 0 and base["accuracy"] == pytest.approx(25.0)  # percent
    assert base["ci_low"] == pytest.approx(20.0) and base["ci_high"] == pytest.approx(30.0)


def test_sft_trajectory_without_rl(frames):
    rows = _data(plots.sft_trajectory(frames["traj"]).to_dict())
    assert {r["stage"] for r in rows} == {"SFT checkpoint"}


def test_rl_recovery_spec_has_the_peak_rule(frames):
    spec = plots.rl_recovery(frames["rl"]).to_dict()
    (line,) = _by_mark(spec, "line")
    assert line["encoding"]["x"]["field"] == "step" and line["encoding"]["color"]["field"] == "series"
    _has_intervals(spec)
    (rule,) = _by_mark(spec, "rule")
    assert rule["encoding"]["y"] == {"aggregate": "mean", "field": "peak", "type": "quantitative"}
    assert rule["mark"]["strokeDash"]
    rows = _data(spec)
    assert [r["peak"] for r in rows] == pytest.approx([19.0] * len(rows))  # peak SFT OOD: sft-25
    assert {r["series"] for r in rows} == {"SFT checkpoint", "after PPO"}
    (text,) = _by_mark(spec, "text")
    assert "19.0%" in text["encoding"]["text"]["value"]


def _two_seeds(df: pl.DataFrame, keys) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``df`` as seed 0 and, 5 points lower on every accuracy, seed 1: (combined, seed-level)."""
    lower = df.with_columns(pl.col(c) - 0.05 for c in df.columns if c.endswith("accuracy"))
    return tables.combine_seeds({0: df, 1: lower}, keys)


def test_seed_lines_are_drawn_faintly_behind_the_means(frames):
    traj, traj_seeds = _two_seeds(frames["traj"], ("model", "step"))
    rl, rl_seeds = _two_seeds(frames["rl"], ("step", "rl_model", "sft_model"))
    for spec in (plots.sft_trajectory(traj, rl, traj_seeds).to_dict(), plots.rl_recovery(rl, rl_seeds).to_dict()):
        lines = _by_mark(spec, "line")
        (faint,) = [line for line in lines if isinstance(line["mark"], dict) and "opacity" in line["mark"]]
        assert len(lines) == 2 and faint["mark"]["opacity"] < 1 and faint["encoding"]["detail"]["field"] == "seed"
        assert "mean of 2 seeds" in str(spec["title"])
        seeds = {r["seed"] for r in spec["datasets"][faint["data"]["name"]]}
        assert seeds == {0, 1}
    rows = _data(plots.sft_trajectory(traj, rl, traj_seeds).to_dict())
    base = next(r for r in rows if r["model"] == "base" and r["split"] == "OOD" and r["stage"] == "SFT checkpoint")
    assert base["accuracy"] == pytest.approx(22.5)  # the mean of the two seeds, in percent
    # one seed: no faint lines, the chart as before
    one = plots.sft_trajectory(frames["traj"], frames["rl"], tables.combine_seeds({0: frames["traj"]}, ("model",))[1])
    assert len(_by_mark(one.to_dict(), "line")) == 1


def test_stages_spec(frames):
    spec = plots.stages(frames["stages"]).to_dict()
    (bar,) = _by_mark(spec, "bar")
    assert bar["encoding"]["x"]["field"] == "label" and bar["encoding"]["xOffset"]["field"] == "split"
    assert bar["encoding"]["x"]["sort"] == ["Premax (sft-25)", "Moderate (sft-400)", "RL (ppo-400)"]
    _has_intervals(spec)


def test_sigma_change_spec(frames):
    chart = plots.sigma_change(frames["profile"])
    assert isinstance(chart, alt.FacetChart)
    spec = chart.to_dict()
    assert spec["facet"]["field"] == "type" and spec["facet"]["sort"] == ["q", "down"]
    (line,) = _by_mark(spec, "line")
    assert line["encoding"]["y"]["field"] == "abs_rel_dsigma" and line["encoding"]["y"]["scale"]["type"] == "log"
    assert line["encoding"]["x"]["field"] == "rel_index" and line["encoding"]["color"]["field"] == "pair"
    assert line["encoding"]["color"]["sort"] == ["base → sft-400", "sft-25 → sft-400", "sft-400 → ppo-400"]
    (rect,) = _by_mark(spec, "rect")
    assert rect["encoding"]["fill"]["field"] == "band"
    assert {"start", "stop"} == {rect["encoding"]["x"]["field"], rect["encoding"]["x2"]["field"]}


def test_principal_angles_spec_with_band_means(frames):
    spec = plots.principal_angles(frames["profile"], frames["spectrum"]).to_dict()
    assert spec["facet"]["field"] == "type"
    (line,) = _by_mark(spec, "line")
    assert line["encoding"]["y"]["field"] == "angle" and line["encoding"]["strokeDash"]["field"] == "subspace"
    (rect,) = _by_mark(spec, "rect")
    assert rect["encoding"]["fill"]["field"] == "band"
    (rule,) = _by_mark(spec, "rule")  # band means across each band
    assert rule["encoding"]["x"]["field"] == "rel_start" and rule["encoding"]["x2"]["field"] == "rel_stop"
    bands = [r for r in _data(spec) if r["row"] == "band"]
    head = next(
        r
        for r in bands
        if r["pair"] == "base → sft-400" and r["type"] == "q" and r["band"] == "head" and r["subspace"] == "V"
    )
    assert head["angle"] == pytest.approx(6.0) and head["rel_start"] == 0 and head["rel_stop"] == pytest.approx(0.1)
    curve = [r for r in _data(spec) if r["row"] == "index" and r["angle"] is not None]
    assert {r["subspace"] for r in curve} == {"U", "V"}


def test_uv_merge_spec_leaves_out_the_reverse_experiment(frames):
    spec = plots.uv_merge(frames["uv"]).to_dict()
    assert spec["facet"]["column"]["field"] == "split"
    (line,) = _by_mark(spec, "line")
    assert line["encoding"]["x"]["field"] == "fraction" and line["encoding"]["color"]["field"] == "edit"
    _has_intervals(spec)
    assert {r["encoding"]["y"]["field"] for r in _by_mark(spec, "rule")} == {"donor", "target"}
    rows = _data(spec)
    assert not any("into-ppo" in r["name"] for r in rows)
    assert {r["edit"] for r in rows} == {"uv-merge top", "uv-merge bottom", "sigma-swap"}
    top02 = next(
        r for r in rows if r["name"].endswith("top0.2") and r["edit"] == "uv-merge top" and r["split"] == "OOD"
    )
    assert top02["fraction"] == pytest.approx(0.2) and top02["donor"] == pytest.approx(19.0)
    assert top02["recovery_pct"] == pytest.approx(100 * (0.14 - 0.06) / (0.19 - 0.06))


def test_layer_reset_spec(frames):
    spec = plots.layer_reset(frames["layers"]).to_dict()
    (bar,) = _by_mark(spec, "bar")
    assert bar["encoding"]["x"]["field"] == "group"
    assert bar["encoding"]["x"]["sort"] == ["layers 0 (0-0.25)", "layers 0-1 (0-0.5)"]
    _has_intervals(spec)
    assert {r["encoding"]["y"]["field"] for r in _by_mark(spec, "rule")} == {"donor", "target"}


def test_missing_columns_name_the_plot():
    with pytest.raises(ValueError, match=r"rl_recovery: missing columns \['peak_sft_ood'"):
        plots.rl_recovery(pl.DataFrame({"step": [1]}))


def test_read_table_reads_empty_columns_as_numbers(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("step,recovery_pct\n25,\n50,\n")
    assert tables.read_table(path).schema["recovery_pct"] == pl.Float64
    with pytest.raises(ValueError, match="missing.csv"):
        tables.read_table(tmp_path / "missing.csv")


def test_save_chart_writes_offline_html_png_svg_deterministically(frames, tmp_path):
    chart = plots.layer_reset(frames["layers"])
    out = {ext: tmp_path / f"a.{ext}" for ext in ("html", "png", "svg")}
    plots.save_chart(chart, **out)
    html = out["html"].read_text()
    assert not re.search(r"<script[^>]+src=[\"']?https?:", html)  # JavaScript inlined: opens offline
    assert "vegaEmbed" in html and len(html) > 100_000
    plots.check_offline_html(out["html"])
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = out["svg"].read_text()
    assert svg.startswith("<svg") and "layers 0-1" in svg
    again = {ext: tmp_path / f"b.{ext}" for ext in ("html", "png", "svg")}
    plots.save_chart(chart, **again)
    for ext, path in out.items():
        assert path.read_bytes() == again[ext].read_bytes(), ext
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave nothing behind


def test_check_offline_html_rejects_a_cdn_script(tmp_path):
    page = tmp_path / "cdn.html"
    page.write_text(
        '<html><script src="https://cdn.jsdelivr.net/npm/vega@5"></script><script>vegaEmbed()</script></html>'
    )
    with pytest.raises(ValueError, match="loads scripts from the network"):
        plots.check_offline_html(page)


def test_chart_html_renders_in_chromium_without_console_errors(frames, tmp_path):
    from browser import open_page, require_chromium

    require_chromium()
    html = tmp_path / "stages.html"
    plots.save_chart(plots.stages(frames["stages"]), html=html)
    shot = tmp_path / "stages.png"
    drawn = "document.querySelectorAll('canvas, svg.marks').length"
    errors, marks = open_page(html.as_uri(), shot, evaluate=drawn)
    assert errors == []
    assert marks >= 1  # vega-embed drew the chart
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
