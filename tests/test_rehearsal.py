"""The rehearsal of the paper path (config/rehearsal.yaml), run from an empty results/ to its report
exactly as the README says: `sftrl chat-model results/rehearsal-model`, then Snakemake on the
study config. It is the paper configs' path (local checkpoint, BPE tokenizer and chat template,
the study's prompt and JSON answer, SFT lengths from sft.max_length, sampled 5-turn evaluation,
PPO with feedback turns, float arithmetic, spectra without factors, edits at the model's depth)
on a random 2.4M-parameter Qwen2 model: a value of the tiny study leaking into it fails here."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import polars as pl
import pytest
import yaml

from conftest import ROOT, run_snakemake

CONFIG = ROOT / "config" / "rehearsal.yaml"

pytestmark = pytest.mark.slow  # the whole workflow on the chat model (~2 minutes)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("rehearsal")
    model = workdir / "results" / "rehearsal-model"
    build = subprocess.run(
        [sys.executable, "-m", "sftrl.cli", "chat-model", str(model)], capture_output=True, text=True, cwd=workdir
    )
    assert build.returncode == 0, build.stderr
    run_snakemake(workdir, "--cores", "2", configfile=CONFIG)
    run_snakemake(workdir, "--report", "results/rehearsal/report.html", configfile=CONFIG)
    return workdir / "results" / "rehearsal"


def test_the_chat_model_is_a_qwen2_checkpoint_with_a_chat_template(rehearsal):
    model = rehearsal.parent / "rehearsal-model"
    config = json.loads((model / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["num_key_value_heads"] < config["num_attention_heads"]
    assert not config["tie_word_embeddings"]
    assert "<|im_start|>" in (model / "chat_template.jinja").read_text()
    generation = json.loads((model / "generation_config.json").read_text())
    assert generation["do_sample"] is True and generation["temperature"] == 0.7


def test_the_rehearsal_runs_every_stage_to_the_report(rehearsal):
    cfg = yaml.safe_load(CONFIG.read_text())
    assert (rehearsal / "report.html").stat().st_size > 10_000
    for name in ("sft-trajectory", "rl-recovery", "stages", "spectrum", "uv-merge", "layer-reset"):
        assert (rehearsal / "tables" / f"{name}.md").is_file(), name
    models = ["base", *(f"sft-{s}" for s in cfg["sft"]["checkpoints"]), *(f"ppo-{s}" for s in cfg["rl"]["from"])]
    for model in models:
        # local weights: one base (models/base, eval/base/) for every replicate; the rest per seed
        where = rehearsal if model == "base" else rehearsal / "seed-0"
        for split in ("id", "ood"):
            summary = json.loads((where / "eval" / model / f"{split}.json").read_text())
            assert summary["n"] == cfg["data"]["eval_size"]
            assert len(summary["solved_by_turn"]) == cfg["eval"]["turns"] == 5
    # spectra without stored factors: every comparison decomposed the checkpoints, no SVD file
    assert (rehearsal / "models" / "base").is_dir() and not (rehearsal / "seed-0" / "models" / "base").exists()
    one = rehearsal / "seed-0"
    assert not (one / "svd").exists() and len(list((one / "spectrum").glob("*.index.parquet"))) >= 4


def test_sft_lengths_come_from_the_study_not_the_tiny_model(rehearsal):
    """The paper prompt rendered through the chat template is ~300 tokens: more than the tiny
    model's 192 positions, so the old tiny-derived limit (64) would have cut every example."""
    log = (rehearsal / "seed-0" / "logs" / "sft" / "sft-2.log").read_text()
    longest, limit = map(int, re.search(r"the longest is (\d+) tokens \(limit (\d+)\)", log).groups())
    assert limit == 512 and 192 < longest <= limit
    losses = [
        json.loads(line)["loss"]
        for line in (rehearsal / "seed-0" / "logs" / "sft" / "sft-4.metrics.jsonl").open()
        if "loss" in json.loads(line)
    ]
    first = [
        json.loads(line)["loss"]
        for line in (rehearsal / "seed-0" / "logs" / "sft" / "sft-2.metrics.jsonl").open()
        if "loss" in json.loads(line)
    ]
    assert losses[-1] < first[0]  # the loss falls along the two segments


def test_rl_is_named_by_algorithm_and_scores_with_the_studys_arithmetic(rehearsal):
    log = (rehearsal / "seed-0" / "logs" / "rl" / "ppo-4.log").read_text()
    assert "arithmetic='float'" in log and "turns=5" in log
    rows = [json.loads(line) for line in (rehearsal / "seed-0" / "logs" / "ppo-4" / "metrics.jsonl").open()]
    assert [r["update"] for r in rows] == [1, 2]
    assert all(r["charts/mean_turns"] <= 5 for r in rows)


def test_layer_resets_are_resolved_at_the_models_depth(rehearsal):
    layers = pl.read_csv(rehearsal / "tables" / "layer-reset.csv")
    assert dict(zip(layers["layers"], layers["layer_ids"], strict=True)) == {"0-0.25": "0", "0-0.5": "0-1"}


def test_the_tables_have_the_tiny_studys_columns(rehearsal, reduced_study):
    tiny = reduced_study / "results" / "test" / "tables"
    for csv in sorted(tiny.glob("*.csv")):
        if csv.name == "rl-sweep.csv":
            continue
        mine = rehearsal / "tables" / csv.name
        assert mine.is_file(), csv.name
        assert pl.read_csv(mine).columns == pl.read_csv(csv).columns, csv.name
