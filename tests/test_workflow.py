"""The workflow: dry-runs of the DAG, config errors before any job, a real reduced run."""

import json
import shutil

import polars as pl
import pytest

from sftrl import data
from sftrl.game import card_to_rank

from conftest import reduced_config, run_snakemake, write_config


def test_dry_run_lists_the_data_jobs(tmp_path):
    write_config(tmp_path, reduced_config())
    out = run_snakemake(tmp_path, "-n", "--cores", "1").stdout
    for rule in ("data_sft", "data_rl", "data_eval", "data_pretrain", "base", "sft", "evaluate"):
        assert f"rule {rule}:" in out or f"\n{rule} " in out, rule


def test_misspelt_key_fails_before_any_job_naming_it(tmp_path):
    cfg = reduced_config()
    cfg["sft"]["learning_rate"] = 1e-3
    write_config(tmp_path, cfg)
    proc = run_snakemake(tmp_path, "-n", "--cores", "1", check=False)
    assert proc.returncode != 0
    assert "sft.learning_rate" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_rl_outputs_are_named_by_their_algorithm(tmp_path):
    cfg = reduced_config()
    cfg["rl"]["algorithm"] = "grpo"
    write_config(tmp_path, cfg)
    out = run_snakemake(tmp_path, "-n", "--cores", "1", "all_rl", "results/test/seed-0/eval/grpo-8/ood.json").stdout
    assert "results/test/seed-0/models/grpo-4" in out and "results/test/seed-0/models/grpo-8" in out
    assert "results/test/seed-0/logs/grpo-8/metrics.jsonl" in out
    assert "ppo-" not in out


def test_data_rule_writes_the_four_data_files(tmp_path):
    cfg = reduced_config()
    write_config(tmp_path, cfg)
    run_snakemake(tmp_path, "--cores", "2", "all_data")
    d = tmp_path / "results" / "test" / "data"
    sizes = {"sft": 640, "rl": 64, "eval-id": 24, "eval-ood": 24}
    for name, n in sizes.items():
        df = pl.read_parquet(d / f"{name}.parquet")
        assert df.height == n, name
        assert {"cards", "numbers", "prompt"} <= set(df.columns)
    assert not list(d.glob(".*tmp"))  # no temporary files left


@pytest.mark.slow
def test_reduced_study_runs_end_to_end(reduced_study, two_seeds):
    """Every stage ran, and nothing is left to do. That the same config and seed give the same
    weights, answers and tables is checked where the tests make them again anyway
    (test_envs.test_each_rule_runs_without_what_its_env_lacks); that adding or removing a seed
    leaves the other replicates untouched, by the seed tests of test_rebuild."""
    res = reduced_study / "results" / "test" / "seed-0"  # the one replicate (seeds: [0])
    for model in ("base", "sft-4", "sft-8", "ppo-4", "ppo-8"):
        assert (res / "models" / model / "model.safetensors").is_file()
        for split in ("id", "ood"):
            s = json.loads((res / "eval" / model / f"{split}.json").read_text())
            assert s["n"] == 24 and 0 <= s["accuracy"] <= 1
    table = (res / "tables" / "sft-trajectory.md").read_text()
    assert "| sft-8 | 8 |" in table
    assert (res / "logs" / "sft" / "sft-8.metrics.jsonl").is_file()
    for name in ("sft-trajectory", "rl-recovery"):  # with one seed, the study's table is the seed's own
        combined = (reduced_study / "results" / "test" / "tables" / f"{name}.csv").read_text()
        assert combined == (res / "tables" / f"{name}.csv").read_text(), name
    assert "Nothing to be done" in run_snakemake(reduced_study, "-n", "--cores", "1").stdout
    # another seed trains other models from the same data
    other = two_seeds / "results" / "test" / "seed-1" / "models"
    for model in ("base", "sft-8", "ppo-8"):
        weights = (other / model / "model.safetensors").read_bytes()
        assert weights != (res / "models" / model / "model.safetensors").read_bytes(), model


@pytest.mark.slow
def test_rl_and_sft_data_hold_only_the_id_rule_and_no_heldout_hand(reduced_study):
    # The study's honesty rule: nothing of the OOD rule and no held-out multiset reaches SFT or RL.
    res = reduced_study / "results" / "test" / "data"
    held = data.heldout_multisets(*(reduced_config()["data"][k] for k in ("holdout_fraction", "holdout_seed")))
    assert held
    for name in ("sft", "rl"):
        df = pl.read_parquet(res / f"{name}.parquet")
        assert df.height > 0 and set(df["rule"]) == {"id"}, name
        assert all(fv == [10, 10, 10] for fv in df["face_values"].to_list()), name
        assert all("|10 10 10|" in p for p in df["prompt"]), name
        ranks = {tuple(sorted(card_to_rank(c) for c in cards)) for cards in df["cards"].to_list()}
        assert not ranks & held, name
        assert not df["heldout"].any(), name
    # the pretraining data of the tiny base states other face values, but no held-out hand either
    pre = pl.read_parquet(res / "pretrain.parquet")
    ranks = {tuple(sorted(card_to_rank(c) for c in cards)) for cards in pre["cards"].to_list()}
    assert not ranks & held


@pytest.mark.slow
def test_an_edit_job_evaluates_its_model_and_keeps_it_only_when_asked(reduced_study, tmp_path):
    """One job edits and evaluates (rules/edits.smk): the evaluation is there, the edited model is
    gone with its work directory; with edits.keep the same job leaves the model, loadable."""
    from sftrl.models import load_model

    res = reduced_study / "results" / "test" / "seed-0"
    donor = json.loads((res / "eval" / "peak-ood.json").read_text())["model"]
    name = f"layerreset-{donor}-into-sft-8-layers0-0.5"
    for split in ("id", "ood"):
        summary = json.loads((res / "eval" / name / f"{split}.json").read_text())
        assert summary["model"] == name and summary["split"] == split and summary["n"] == 24
    log = (res / "logs" / "edits" / f"{name}.log").read_text()
    assert "layer-reset" in log and '"accuracy"' in log and "job: timing: imports" in log
    assert not (res / "models" / name).exists()
    assert not list((res / "train").glob("edits/*"))  # the work directory went with the job

    work = tmp_path / "study"
    shutil.copytree(reduced_study, work, symlinks=True)
    cfg = reduced_config()
    cfg["edits"]["keep"] = True
    write_config(work, cfg)
    run_snakemake(work, "--cores", "1", f"results/test/seed-0/models/{name}")
    model = load_model(work / "results" / "test" / "seed-0" / "models" / name)
    assert model.config.num_hidden_layers == cfg["model"]["tiny"]["num_layers"]
    again = json.loads((work / "results" / "test" / "seed-0" / "eval" / name / "id.json").read_text())
    assert again == json.loads((res / "eval" / name / "id.json").read_text())  # the same model, the same play
