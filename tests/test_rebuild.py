"""Rebuild behaviour: after a completed run, a config change re-runs exactly what depends on it.

Each test edits one value of the reduced study's config (or the code, in a copy of the
repository) and reads the job list of a dry-run against the completed study, through the
project's workflow profile (profiles/default: its rerun triggers). The edit, the SFT checkpoints,
the hyper-parameters and the code each rule runs (`code`, sftrl.fingerprint) are all
`params`/inputs of their rules, so Snakemake's rerun triggers (mtime, params, input) decide;
run-only settings are not params, so they rerun nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import JOB, ROOT, reduced_config

pytestmark = pytest.mark.slow


def planned_jobs(workdir, cfg: dict, repo: Path = ROOT) -> list[tuple[str, str]]:
    """(rule, wildcards) of every job a dry-run with ``cfg`` would run in ``workdir``, with the
    workflow, its profile and the sftrl package of ``repo`` (a copy, to edit the code)."""
    path = workdir / "changed.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(repo / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(path), "--workflow-profile", str(repo / "profiles" / "default"), "-n"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(repo / "src")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = proc.stdout
    jobs = []
    for m in JOB.finditer(out):
        wildcards = re.search(r"^    wildcards: (.*)$", m.group("body"), re.M)
        jobs.append((m.group(1), wildcards.group(1) if wildcards else ""))
    return jobs


def rules_of(jobs) -> set[str]:
    return {rule for rule, _ in jobs}


# Rules that summarise everything: they re-run whenever any of their inputs does.
SUMMARIES = re.compile(r"^(table_\w+|plot\w*|report_\w+|peak_ood|all)$")


def own_jobs(jobs) -> list[tuple[str, str]]:
    return sorted((r, w) for r, w in jobs if not SUMMARIES.match(r))


def test_a_completed_study_has_nothing_to_do(reduced_study):
    assert planned_jobs(reduced_study, reduced_config()) == []


def test_changing_an_edit_sweep_value_reruns_only_that_edit_and_what_reads_it(reduced_study):
    cfg = reduced_config()
    assert cfg["edits"]["uv_merge"][0] == [0.2, 0.0]
    cfg["edits"]["uv_merge"][0] = [0.3, 0.0]
    jobs = planned_jobs(reduced_study, cfg)
    # one job edits and evaluates (rules/edits.smk)
    assert own_jobs(jobs) == [("edit", "seed=0, method=uvmerge, donor=sft-4, target=sft-8, param=top0.3")]
    assert "table_edits" in rules_of(jobs)
    assert not rules_of(jobs) & {"table_sft_trajectory", "table_rl_recovery", "table_spectrum"}


def test_adding_an_sft_checkpoint_past_the_last_adds_only_its_own_jobs(reduced_study):
    cfg = reduced_config()
    cfg["sft"]["checkpoints"] = [*cfg["sft"]["checkpoints"], cfg["sft"]["max_steps"]]  # 4, 8, 12
    jobs = planned_jobs(reduced_study, cfg)
    assert ("sft", "seed=0, step=12") in jobs and ("evaluate", "seed=0, model=sft-12") in jobs
    # every job but the summaries is about the new checkpoint: its segment, evaluation, RL run,
    # SVDs and spectra (the last checkpoint is also the edits' target, so the sweep moves to it)
    for rule, wildcards in own_jobs(jobs):
        assert re.search(r"(sft|ppo)-12\b|(step|start)=12\b", wildcards), (rule, wildcards)
    assert ("sft", "seed=0, step=4") not in jobs and ("sft", "seed=0, step=8") not in jobs


def test_inserting_an_sft_checkpoint_reruns_the_later_segments(reduced_study):
    cfg = reduced_config()
    cfg["sft"]["checkpoints"] = [4, 6, 8]
    jobs = planned_jobs(reduced_study, cfg)
    # sft-8 now resumes from state-6 instead of state-4: same weights, but a changed input
    assert {("sft", "seed=0, step=6"), ("sft", "seed=0, step=8")} <= set(jobs)
    assert ("sft", "seed=0, step=4") not in jobs and "base" not in rules_of(jobs)


@pytest.mark.parametrize("section", ["sft", "base"])
def test_changing_a_training_hyperparameter_reruns_training_and_after_not_before(reduced_study, section):
    cfg = reduced_config()
    cfg[section]["lr"] *= 2
    jobs = planned_jobs(reduced_study, cfg)
    rules = rules_of(jobs)
    assert not {r for r in rules if r.startswith("data_")}
    steps = reduced_config()["sft"]["checkpoints"]
    assert {("sft", f"seed=0, step={s}") for s in steps} <= set(jobs)
    assert {("evaluate", f"seed=0, model=sft-{s}") for s in steps} <= set(jobs)
    assert {("rl", f"seed=0, start={s}") for s in steps} <= set(jobs)
    assert "table_sft_trajectory" in rules
    # (spectra and edits follow once the re-run `peak_ood` checkpoint has chosen the donor again,
    # so a dry-run cannot list them yet)
    base_jobs = {("base", "seed=0"), ("evaluate", "seed=0, model=base")}
    if section == "sft":
        assert not base_jobs & set(jobs)
    else:
        assert base_jobs <= set(jobs)


# --- reruns follow the code, and only what changes results -------------------------------------


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """The workflow and the sftrl package copied (with their dates), to edit the code."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("Snakefile", "config.yaml"):
        shutil.copy2(ROOT / name, repo / name)
    for name in ("rules", "scripts", "config", "envs", "profiles", "report", "src/sftrl"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    return repo


def test_the_copy_plans_nothing_and_touching_every_script_plans_nothing(reduced_study, repo_copy):
    """A fresh clone or a `git checkout` gives every file a new date: nothing reruns for that."""
    for path in [*(repo_copy / "scripts").glob("*.py"), *(repo_copy / "src" / "sftrl").glob("*.py")]:
        os.utime(path)
    assert planned_jobs(reduced_study, reduced_config(), repo_copy) == []


def test_editing_the_ppo_module_reruns_the_rl_runs_and_what_reads_them_only(reduced_study, repo_copy):
    with open(repo_copy / "src" / "sftrl" / "ppo.py", "a") as fh:
        fh.write("\n# an edit of the PPO code\n")
    jobs = planned_jobs(reduced_study, reduced_config(), repo_copy)
    steps = reduced_config()["sft"]["checkpoints"]
    assert {("rl", f"seed=0, start={s}") for s in steps} <= set(jobs)
    assert {("evaluate", f"seed=0, model=ppo-{s}") for s in steps} <= set(jobs)
    # everything else planned reads a PPO model (its evaluation, SVD, spectra, reverse edits)
    for rule, wildcards in own_jobs(jobs):
        assert rule == "rl" or "ppo-" in wildcards, (rule, wildcards)
    assert not {r for r in rules_of(jobs) if r.startswith("data_")} | ({"base", "sft"} & rules_of(jobs))
    assert "table_rl_recovery" in rules_of(jobs) and "table_sft_trajectory" not in rules_of(jobs)


def test_editing_a_script_reruns_its_rule_and_what_reads_it(reduced_study, repo_copy):
    with open(repo_copy / "scripts" / "table_sft_trajectory.py", "a") as fh:
        fh.write("# an edit\n")
    jobs = planned_jobs(reduced_study, reduced_config(), repo_copy)
    readers = {"table_seeds", "table_findings", "plot", "report_table", "table_benchmarks", "all"}
    assert rules_of(jobs) <= {"table_sft_trajectory", *readers}
    assert ("table_sft_trajectory", "seed=0") in jobs and ("plot", "plot=sft-trajectory") in jobs


def test_run_only_settings_rerun_nothing(reduced_study):
    """Batch sizes for memory, state saving, the launcher, threads, resources and logging: how a
    job runs, not what it computes."""
    cfg = reduced_config()
    cfg["eval"]["batch_size"] = 7
    cfg["rl"].update(micro_batch_size=4, rollout_batch_size=3, save_every=2)
    cfg["sft"].update(per_device_batch_size=16, save_every=2)
    cfg["distributed"]["launcher"] = "torchrun"
    cfg["threads"] = 2
    cfg["resources"]["sft"] = {**cfg["resources"]["sft"], "mem_mb": 8000, "runtime": "2h", "qos": "long"}
    cfg["logging"] = {"report_to": "tensorboard"}
    assert planned_jobs(reduced_study, cfg) == []


# --- seeds: replicates come and go without touching each other ----------------------------------

# What combines the replicates: the tables across seeds, the findings (every seed's value), the
# plots and report pages drawn from them, the job records, the aggregate target.
ACROSS_SEEDS = {
    "table_seeds",
    "table_seeds_profile",
    "table_findings",
    "plot",
    "report_table",
    "table_benchmarks",
    "all",
}


def test_adding_a_seed_plans_only_that_seeds_jobs_and_the_tables_across_seeds(reduced_study):
    cfg = reduced_config()
    cfg["seeds"] = [0, 1]
    jobs = planned_jobs(reduced_study, cfg)
    seeded = [(r, w) for r, w in jobs if r not in ACROSS_SEEDS]
    assert {("base", "seed=1"), ("sft", "seed=1, step=4"), ("rl", "seed=1, start=8")} <= set(seeded)
    assert all(w.startswith("seed=1") for _, w in seeded), seeded  # nothing of seed 0 again
    assert not {r for r in rules_of(jobs) if r.startswith("data_")}  # the data are every seed's
    assert ("table_seeds", "table=sft-trajectory") in jobs


def test_a_second_seed_gives_tables_with_intervals_over_seeds(two_seeds):
    import polars as pl

    res = two_seeds / "results" / "test"
    combined = pl.read_csv(res / "tables" / "sft-trajectory.csv")
    per_seed = [pl.read_csv(res / f"seed-{n}" / "tables" / "sft-trajectory.csv") for n in (0, 1)]
    assert combined["model"].to_list() == per_seed[0]["model"].to_list() and set(combined["seeds"]) == {2}
    for i, row in enumerate(combined.iter_rows(named=True)):
        a, b = (t["ood_accuracy"][i] for t in per_seed)
        assert row["ood_accuracy"] == pytest.approx((a + b) / 2)
        assert row["ood_accuracy_by_seed"] == f"{float(a)!r} / {float(b)!r}"
        half = 12.706 * abs(a - b) / 2  # t(0.975, 1) * sd / sqrt(2), sd = |a - b| / sqrt(2)
        assert row["ood_ci_low"] == pytest.approx((a + b) / 2 - half) and row["ood_ci_high"] == pytest.approx(
            (a + b) / 2 + half
        )
    seeds = pl.read_csv(res / "tables" / "sft-trajectory.seeds.csv")
    assert seeds.height == 2 * combined.height and set(seeds["seed"]) == {0, 1}
    md = (res / "tables" / "rl-recovery.md").read_text()
    assert "ΔOOD mean [95% CI over seeds]" in md and "recovery % per seed" in md and "t-interval over seeds" in md
    records = pl.read_csv(res / "benchmarks" / "summary.csv")
    assert set(records["seed"]) == {0, 1}
    chart = (res / "plots" / "sft-trajectory.html").read_text()
    assert "mean of 2 seeds" in chart and '"detail"' in chart  # each seed drawn faintly


def test_removing_a_seed_reruns_only_the_tables_across_seeds(two_seeds):
    cfg = reduced_config()
    cfg["seeds"] = [0, 1]
    assert planned_jobs(two_seeds, cfg) == []
    for kept in ([0], [1]):
        cfg["seeds"] = kept
        jobs = planned_jobs(two_seeds, cfg)
        assert jobs and rules_of(jobs) <= ACROSS_SEEDS, sorted(rules_of(jobs) - ACROSS_SEEDS)
