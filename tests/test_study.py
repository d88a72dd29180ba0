"""The study's decisions (sftrl.study): model names, RL runs and sweep variants, the edit-name
grammar, spectrum pairs, Premax/Moderate/RL and the registry of results, on the default config and
variations of it."""

from __future__ import annotations

import copy
import re

import pytest

from sftrl import study

from conftest import default_config


@pytest.fixture
def cfg():
    return copy.deepcopy(default_config())


def test_models_of_the_default_study(cfg):
    assert study.sft_steps(cfg) == [5, 10, 25, 50, 100, 200, 400]
    assert study.trajectory_models(cfg)[:3] == ["base", "sft-5", "sft-10"]
    assert study.rl_models(cfg) == ["ppo-10", "ppo-50", "ppo-100", "ppo-200", "ppo-400"]
    assert study.study_models(cfg)[-1] == "ppo-400"


def test_rl_from_null_means_every_sft_checkpoint_and_grpo_names_its_models(cfg):
    cfg["rl"]["from"] = None
    cfg["rl"]["algorithm"] = "grpo"
    assert study.rl_models(cfg) == [f"grpo-{s}" for s in cfg["sft"]["checkpoints"]]


def test_rl_hparams_carry_the_verifiers_arithmetic_and_a_variants_overrides(cfg):
    cfg["eval"]["arithmetic"] = "float"
    hp = study.rl_hparams(cfg)
    assert "from" not in hp and hp["arithmetic"] == "float" and hp["lr"] == cfg["rl"]["lr"]
    assert study.rl_hparams(cfg, "lr3e-5")["lr"] == 3.0e-5
    assert study.rl_sweep_models(cfg)[:2] == ["ppo-50", "ppo-200"]
    assert "ppo-50-lr3e-5" in study.rl_sweep_models(cfg)


@pytest.mark.parametrize(
    "edit",
    [
        study.Edit("uvmerge", "sft-10", "sft-400", band=(0.2, 0.0)),
        study.Edit("sigmaswap", "base", "sft-8", band=(0.0, 0.2)),
        study.Edit("tripletswap", "sft-10", "sft-400", band=(0.1, 0.1)),
        study.Edit("layerreset", "sft-10", "sft-400", layers=(0.25, 0.5)),
        study.Edit("uvmerge", "sft-50", "grpo-50", band=(1.0, 0.0)),
    ],
)
def test_edit_names_round_trip(edit):
    assert study.parse_edit(edit.name) == edit
    assert re.fullmatch(study.EDIT_PARAM, edit.param)


def test_edit_names_in_the_tables_form():
    assert study.Edit("uvmerge", "sft-10", "sft-400", band=(0.2, 0.0)).name == "uvmerge-sft-10-into-sft-400-top0.2"
    assert study.parse_edit_name("layerreset-sft-10-into-sft-400-layers0-0.25") == {
        "name": "layerreset-sft-10-into-sft-400-layers0-0.25",
        "method": "layer-reset",
        "donor": "sft-10",
        "target": "sft-400",
        "top": None,
        "bottom": None,
        "layers": "0-0.25",
    }
    assert study.parse_edit("uvmerge-sft-50-into-ppo-50-top1").reverse
    for bad in ("uvmerge-sft-50-top0.2", "layerreset-sft-1-into-sft-2-layers0", "crop-sft-1-into-sft-2-top0.2"):
        with pytest.raises(ValueError, match="not an edited model name"):
            study.parse_edit(bad)


def test_the_default_studys_edits(cfg):
    names = [e.name for e in study.edits(cfg, peak=lambda: "sft-10")]
    assert names[0] == "uvmerge-sft-10-into-sft-400-top0.05"
    assert "sigmaswap-sft-10-into-sft-400-top0.2" in names and "tripletswap-sft-10-into-sft-400-top0.2" in names
    assert "layerreset-sft-10-into-sft-400-layers0-0.25" in names
    assert names[-5:] == [f"uvmerge-sft-{s}-into-ppo-{s}-top1" for s in (10, 50, 100, 200, 400)]
    assert len(names) == len(set(names)) == 7 + 2 + 1 + 6 + 5
    cfg["edits"].update(donor="sft-25", target="sft-200", reverse=False)
    assert {(e.donor, e.target) for e in study.edits(cfg, peak=lambda: "sft-10")} == {("sft-25", "sft-200")}


def test_layer_resets_at_each_depth(cfg):
    assert study.reset_layers(cfg, 4) == {
        "layers0-0.25": [0],
        "layers0.25-0.5": [1],
        "layers0.5-0.75": [2],
        "layers0.75-1": [3],
        "layers0-0.5": [0, 1],
        "layers0-0.75": [0, 1, 2],
    }
    assert study.reset_layers(cfg, 28)["layers0-0.25"] == list(range(7))
    assert study.format_layers(list(range(7)) + [9]) == "0-6,9"


def test_spectrum_pairs_and_profile_pairs(cfg):
    pairs = study.spectrum_pairs(cfg, peak=lambda: "sft-10")
    assert pairs[:2] == [("base", "sft-5"), ("base", "sft-10")]
    assert ("sft-10", "sft-25") in pairs and ("sft-10", "sft-5") not in pairs
    assert ("sft-50", "ppo-50") in pairs
    assert study.profile_pairs(cfg, lambda: "sft-10") == [
        ("base", "sft-400"),
        ("sft-10", "sft-400"),
        ("sft-400", "ppo-400"),
    ]
    cfg["spectrum"]["pairs"] = ["sft-to-rl"]
    assert study.profile_pairs(cfg, lambda: 1 / 0) == [("sft-400", "ppo-400")]  # the peak is not asked for
    cfg["rl"]["from"] = None
    cfg["edits"]["donor"] = "sft-25"
    assert {e.donor for e in study.edits(cfg, lambda: 1 / 0)} >= {"sft-25"}


def test_moderate_is_the_edits_target_when_rl_started_from_it(cfg):
    assert study.stage_models(cfg, lambda: "sft-10") == {"Premax": "sft-10", "Moderate": "sft-400", "RL": "ppo-400"}
    cfg["rl"]["from"] = [10, 50]
    assert study.moderate_model(cfg) == "sft-50" and study.moderate_rl_model(cfg) == "ppo-50"
    cfg["rl"]["from"] = [10, 50, 400]
    cfg["rl"]["algorithm"] = "grpo"
    assert study.moderate_rl_model(cfg) == "grpo-400"


def test_the_registry_follows_the_config(cfg):
    assert study.table_names(cfg) == [
        "findings",
        "sft-trajectory",
        "rl-recovery",
        "stages",
        "spectrum",
        "uv-merge",
        "layer-reset",
        "benchmarks",
    ]
    assert study.RESULT["benchmarks"].path == "benchmarks/summary" and study.RESULT["stages"].path == "tables/stages"
    assert study.plot_names(cfg) == [
        "sft-trajectory",
        "rl-recovery",
        "stages",
        "sigma-change",
        "principal-angles",
        "uv-merge",
        "layer-reset",
    ]
    cfg["edits"].update(uv_merge=[], sigma_swap=[], triplet_swap=[], layer_reset=[])
    assert "uv-merge" not in study.plot_names(cfg) and "layer-reset" not in study.plot_names(cfg)
    assert "uv-merge" in study.table_names(cfg)  # one rule writes both edit tables
    assert set(study.TABLES) | set(study.PLOTS) == set(study.RESULT)


def test_sft_step_rejects_models_outside_the_trajectory():
    assert study.sft_step("base") == 0 and study.sft_step("sft-1600") == 1600
    with pytest.raises(ValueError, match="ppo-800"):
        study.sft_step("ppo-800")


def test_model_step():
    assert [study.model_step(m) for m in ("base", "sft-25", "ppo-400", "grpo-7", "ppo-50-lr3e-5")] == [
        0,
        25,
        400,
        7,
        50,
    ]
    with pytest.raises(ValueError):
        study.model_step("uvmerge-sft-1-into-sft-2-top0.2")


def test_seeds_offset_every_training_seed_and_share_a_local_base(cfg):
    assert study.seeds(cfg) == [0]  # the default study: one replicate, the configured run itself
    cfg["seeds"] = [2, 0, 1]
    assert study.seeds(cfg) == [0, 1, 2]
    assert study.replicate(cfg["sft"], 2)["seed"] == cfg["sft"]["seed"] + 2
    assert study.replicate(cfg["sft"], 0) == cfg["sft"] and study.replicate(None, 1) is None
    assert cfg["sft"]["seed"] == 0  # a copy: the config is untouched
    assert set(study.SEEDED) == {"model.tiny.seed", "base.seed", "sft.seed", "rl.seed"}
    assert not study.shared_base(cfg)  # a tiny base is trained per replicate
    cfg["model"]["source"] = "local"
    assert study.shared_base(cfg)  # local weights are every replicate's


def test_every_result_table_is_combined_across_seeds_but_the_job_records_and_the_findings():
    """The job records and the findings are made from every seed at once, not per seed."""
    tables = {r.name for r in study.RESULTS if r.table}
    assert set(study.SEEDED_RESULT) == (tables - {"benchmarks", "findings"}) | {"rl-sweep", "spectrum-profile"}
    assert study.plot_tables(default_config(), "rl-recovery") == {"rl": "rl-recovery", "rl_seeds": "rl-recovery.seeds"}
