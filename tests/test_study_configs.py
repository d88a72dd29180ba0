"""Every study config under config/ as Snakemake builds it: config.yaml first, the study file merged
over it key by key (snakemake.utils.update_config), then the tiny-only keys dropped for a study of
local weights (sftrl.config.strip_tiny_only, as rules/common.smk does). A study of local weights
must be self-contained -- no value of the tiny study may reach it -- and the paper configs must
carry every value the study states (docs/README "Paper-scale studies" lists them)."""

from __future__ import annotations

import copy
import json
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from snakemake.utils import update_config

from sftrl.config import (
    TINY_ONLY,
    ConfigError,
    layer_range,
    model_path_problems,
    replace_resource_groups,
    strip_tiny_only,
    validate,
)

from conftest import PAPER_MODEL_CONFIGS, ROOT, default_config, fake_checkpoint, paper_config, run_snakemake

STUDY_CONFIGS = sorted(p for p in (ROOT / "config").glob("*.yaml") if p.name != "schema.yaml")
PAPER_CONFIGS = [p for p in STUDY_CONFIGS if p.stem.startswith("paper-")]


def effective(path: Path) -> dict:
    """The config a run of ``--configfile path`` sees (see the module docstring)."""
    cfg, own = default_config(), yaml.safe_load(path.read_text())
    update_config(cfg, own)
    replace_resource_groups(cfg, own)
    return strip_tiny_only(cfg)


def leaves(d: dict, prefix: str = "") -> set[str]:
    """Dotted key paths of the values of ``d`` (lists are values)."""
    out = set()
    for k, v in d.items():
        key = f"{prefix}{k}"
        out |= leaves(v, key + ".") if isinstance(v, dict) and v else {key}
    return out


def tiny_only(key: str) -> bool:
    return any(key == t or key.startswith(t + ".") for t in TINY_ONLY)


def test_the_study_configs_are_found():
    names = {p.name for p in STUDY_CONFIGS}
    assert {"paper-qwen2.5-7b.yaml", "paper-llama-3.2-11b.yaml", "rehearsal.yaml", "ablation-rl.yaml"} <= names


@pytest.mark.parametrize("path", STUDY_CONFIGS, ids=lambda p: p.stem)
def test_a_study_of_local_weights_sets_every_key_itself(path):
    own = yaml.safe_load(path.read_text())
    if own.get("model", {}).get("source", "tiny") == "tiny":
        # a variant of the tiny study (e.g. the RL ablation): config.yaml is its defaults
        assert effective(path)["model"]["source"] == "tiny"
        return
    cfg = effective(path)
    missing = sorted(leaves(cfg) - leaves(own))
    assert not missing, f"{path.name} takes these values from the tiny study (config.yaml): {missing}"
    left = sorted(k for k in leaves(cfg) if tiny_only(k))
    assert not left, f"{path.name}: tiny-only keys in the effective config: {left}"
    assert "base" not in cfg and "tiny" not in cfg["model"]
    # nothing the tiny model dictates: SFT length from the study's key, not 64/192 positions
    assert cfg["sft"]["max_length"] is None or cfg["sft"]["max_length"] >= 512


@pytest.mark.parametrize("path", STUDY_CONFIGS, ids=lambda p: p.stem)
def test_every_study_config_is_valid(path, tmp_path, monkeypatch):
    cfg = effective(path)
    if cfg["model"]["source"] == "local":
        stem = path.stem if path.stem in PAPER_MODEL_CONFIGS else "paper-qwen2.5-7b"
        model = fake_checkpoint(tmp_path / "weights", PAPER_MODEL_CONFIGS[stem])
        cfg["model"]["path"] = str(model)
    monkeypatch.chdir(tmp_path)
    validate(cfg, base_dir=tmp_path)


# The values the study states (its SFT and PPO scripts, its evaluation protocol, its edits), which
# each paper config must carry. Checked as key -> value on the effective config.
STUDY_VALUES = {
    "model.source": "local",
    "model.template": "paper",
    "data.eval_size": 234,
    "data.eval_seed": 42,
    "data.holdout_fraction": 0.0,
    "sft.lr": 1e-6,
    "sft.scheduler": "cosine",
    "sft.warmup_ratio": 0.03,
    "sft.weight_decay": 0.0,
    "sft.batch_size": 64,
    "sft.per_device_batch_size": 16,
    "sft.lora.enabled": False,
    "eval.turns": 5,
    "eval.decoding": "model",
    "eval.max_new_tokens": 256,
    "rl.algorithm": "ppo",
    "rl.turns": 5,
    "rl.temperature": 0.2,
    "rl.max_new_tokens": 512,
    "rl.ppo_epochs": 4,
    "rl.clip": 0.1,
    "rl.vf_coef": 0.5,
    "rl.gamma": 0.9,
    "rl.lam": 0.95,
    "rl.kl_coef": 0.0,
    "rl.lr": 1e-6,
    "rl.lr_min": 1e-9,
    "rl.adam_eps": 1e-7,
    "rl.max_grad_norm": 0.01,
    "rl.target_kl": None,
    "spectrum.factors": False,
    "spectrum.pairs": ["base-to-sft", "peak-to-later", "sft-to-rl"],
    "edits.donor": "best-ood",
    "edits.types": "all",
    "edits.layer_reset_embeddings": True,
    "edits.reverse": True,
}
PER_MODEL = {
    # updates of PPO; the peak-OOD checkpoint and the checkpoints RL started from in the study
    "paper-llama-3.2-11b": {"rl.num_updates": 100, "peak": 140, "rl_start": 1100, "depth": 40, "first": 10},
    "paper-qwen2.5-7b": {"rl.num_updates": 300, "peak": 120, "rl_start": 800, "depth": 28, "first": 7},
}


def get(cfg: dict, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_paper_configs_carry_the_studys_values(path):
    cfg = effective(path)
    wrong = {k: get(cfg, k) for k, v in STUDY_VALUES.items() if get(cfg, k) != v}
    assert not wrong, f"{path.name}: {wrong} differ from the study's { ({k: STUDY_VALUES[k] for k in wrong}) }"
    m = PER_MODEL[path.stem]
    assert cfg["rl"]["num_updates"] == m["rl.num_updates"]
    assert {m["peak"], m["rl_start"]} <= set(cfg["sft"]["checkpoints"])
    assert m["peak"] in cfg["rl"]["from"] and m["rl_start"] in cfg["rl"]["from"]
    assert [0.2, 0.0] in cfg["edits"]["uv_merge"]  # "the top 20% of singular values"
    assert [0, 0.25] in cfg["edits"]["layer_reset"]  # "the first 25% of layers"
    # "the first 25% of layers" at the model's depth: 0-9 of Llama's 40, 0-6 of Qwen's 28
    assert layer_range(0, 0.25, m["depth"]) == list(range(m["first"]))
    quarters = [layer_range(lo, hi, m["depth"]) for lo, hi in cfg["edits"]["layer_reset"][:4]]
    assert sum(quarters, []) == list(range(m["depth"]))  # the quarters cover every layer once
    assert cfg["sft"]["max_length"] >= 512  # the study's prompt + answer is ~300 tokens


def test_tiny_only_keys_are_dropped_for_local_weights_only():
    tiny = default_config()
    assert strip_tiny_only(copy.deepcopy(tiny)) == tiny
    local = copy.deepcopy(tiny)
    local["model"]["source"] = "local"
    strip_tiny_only(local)
    assert "tiny" not in local["model"] and "base" not in local
    assert not {"pretrain_size", "pretrain_feedback", "pretrain_wrapped"} & set(local["data"])


def test_layer_ranges_are_fractions_of_the_depth():
    assert layer_range(0, 0.25, 4) == [0]
    assert layer_range(0.75, 1.0, 4) == [3]
    assert layer_range(0, 0.75, 4) == [0, 1, 2]
    assert layer_range(0, 0.625, 40) == list(range(25))  # the study's cumulative 0-24
    assert layer_range(0, 0.1, 4) == []  # narrower than a layer: the config check refuses it


# --- model.path, checked when the DAG is built ---------------------------------------------------


def problems(path, tmp_path) -> list[str]:
    out = tmp_path / "results" / "s"
    return model_path_problems(str(path), tmp_path, out, "s")


def test_model_path_must_be_a_checkpoint_of_a_known_architecture(tmp_path):
    good = fake_checkpoint(tmp_path / "good", PAPER_MODEL_CONFIGS["paper-qwen2.5-7b"])
    assert problems(good, tmp_path) == []
    assert problems(fake_checkpoint(tmp_path / "llama", PAPER_MODEL_CONFIGS["paper-llama-3.2-11b"]), tmp_path) == []
    assert "does not exist" in problems(tmp_path / "nowhere", tmp_path)[0]
    (tmp_path / "file").write_text("x")
    assert "not a directory" in problems(tmp_path / "file", tmp_path)[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no config.json" in problems(empty, tmp_path)[0]
    odd = fake_checkpoint(tmp_path / "odd", {"model_type": "resnet"})
    assert "resnet" in problems(odd, tmp_path)[0] and "causal language model" in problems(odd, tmp_path)[0]
    (good / "model.safetensors").unlink()
    assert "no weights" in problems(good, tmp_path)[0]
    (good / "model.safetensors").write_bytes(b"not safetensors at all")
    assert "safetensors" in problems(good, tmp_path)[0]
    sharded = fake_checkpoint(tmp_path / "sharded", PAPER_MODEL_CONFIGS["paper-qwen2.5-7b"])
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "model-00002-of-00002.safetensors" in problems(sharded, tmp_path)[0]
    save_file({"b": torch.zeros(1)}, str(sharded / "model-00002-of-00002.safetensors"))
    assert problems(sharded, tmp_path) == []
    inside = fake_checkpoint(tmp_path / "results" / "s" / "w", PAPER_MODEL_CONFIGS["paper-qwen2.5-7b"])
    assert "inside results/s/" in problems(inside, tmp_path)[0]


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_a_dry_run_stops_at_once_on_a_missing_model_path(path, tmp_path):
    """The documented command, as a user runs it before editing model.path: it fails in seconds,
    naming the key, with no job planned (and so nothing submitted)."""
    start = time.perf_counter()
    proc = run_snakemake(tmp_path, "-n", configfile=path, check=False)
    print(f"{path.name}: dry-run refused in {time.perf_counter() - start:.1f} s")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "model.path" in out and "does not exist" in out, out
    assert "Traceback" not in out and "Job stats" not in out, out
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_a_dry_run_with_the_weights_visible_plans_the_study(path, tmp_path):
    proc = run_snakemake(tmp_path, "-n", "--cores", "1", configfile=paper_config(path, tmp_path))
    assert "base " in proc.stdout and "peak_ood " in proc.stdout


def test_a_bad_model_path_is_a_configuration_error(tmp_path):
    cfg = effective(ROOT / "config" / "paper-qwen2.5-7b.yaml")
    cfg["model"]["path"] = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="model.path"):
        validate(cfg, base_dir=tmp_path)


def _job_counts(out: str) -> dict[str, int]:
    table = re.search(r"Job stats:\njob +count\n-+ +-+\n(.*?)\n\n", out, re.S).group(1)
    return {rule: int(n) for rule, n in (line.split() for line in table.splitlines())}


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_three_seeds_of_a_paper_study_share_the_base_and_repeat_the_training(path, tmp_path):
    """`--config 'seeds=[0,1,2]'` (README, Seeds): one base and its evaluation for every replicate,
    every training and evaluation job once per seed; seeds need no resources of their own."""
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    configfile = paper_config(path, tmp_path)
    one = _job_counts(run_snakemake(tmp_path, "-n", configfile=configfile).stdout)
    three = _job_counts(run_snakemake(tmp_path, "-n", "--config", "seeds=[0,1,2]", configfile=configfile).stdout)
    assert one["base"] == three["base"] == 1 and one["evaluate_base"] == three["evaluate_base"] == 1
    for rule in ("sft", "rl", "evaluate", "peak_ood", "table_sft_trajectory"):
        assert three[rule] == 3 * one[rule], rule
    assert three["table_seeds"] == one["table_seeds"]  # the tables across seeds: one set
    print(f"{path.stem}: {one['total']} jobs with one seed, {three['total']} with three (before peak_ood)")
