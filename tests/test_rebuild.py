"""Rebuild behaviour: after a completed run, a config change re-runs exactly what depends on it.

Each test edits one value of the reduced study's config and reads the job list of a dry-run
against the completed study. The edit, the SFT checkpoints and the hyper-parameters are all
`params`/inputs of their rules, so Snakemake's default rerun triggers (mtime, params, input,
code) decide; nothing here is special-cased in the workflow.
"""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import reduced_config, run_snakemake

pytestmark = pytest.mark.slow

JOB = re.compile(r"^(?:local)?rule (\w+):\n(?P<body>(?:    .*\n)*)", re.M)


def planned_jobs(workdir, cfg: dict) -> list[tuple[str, str]]:
    """(rule, wildcards) of every job a dry-run with ``cfg`` would run in ``workdir``."""
    path = workdir / "changed.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = run_snakemake(workdir, "-n", "--cores", "1", configfile=path).stdout
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
    assert own_jobs(jobs) == [
        ("edit", "method=uvmerge, donor=sft-4, target=sft-8, param=top0.3"),
        ("evaluate", "model=uvmerge-sft-4-into-sft-8-top0.3"),
    ]
    assert "table_edits" in rules_of(jobs)
    assert not rules_of(jobs) & {"table_sft_trajectory", "table_rl_recovery", "table_spectrum"}


def test_adding_an_sft_checkpoint_past_the_last_adds_only_its_own_jobs(reduced_study):
    cfg = reduced_config()
    cfg["sft"]["checkpoints"] = [*cfg["sft"]["checkpoints"], cfg["sft"]["max_steps"]]  # 4, 8, 12
    jobs = planned_jobs(reduced_study, cfg)
    assert ("sft", "step=12") in jobs and ("evaluate", "model=sft-12") in jobs
    # every job but the summaries is about the new checkpoint: its segment, evaluation, RL run,
    # SVDs and spectra (the last checkpoint is also the edits' target, so the sweep moves to it)
    for rule, wildcards in own_jobs(jobs):
        assert re.search(r"(sft|ppo)-12\b|step=12\b", wildcards), (rule, wildcards)
    assert ("sft", "step=4") not in jobs and ("sft", "step=8") not in jobs


def test_inserting_an_sft_checkpoint_reruns_the_later_segments(reduced_study):
    cfg = reduced_config()
    cfg["sft"]["checkpoints"] = [4, 6, 8]
    jobs = planned_jobs(reduced_study, cfg)
    # sft-8 now resumes from state-6 instead of state-4: same weights, but a changed input
    assert {("sft", "step=6"), ("sft", "step=8")} <= set(jobs)
    assert ("sft", "step=4") not in jobs and "base" not in rules_of(jobs)


@pytest.mark.parametrize("section", ["sft", "base"])
def test_changing_a_training_hyperparameter_reruns_training_and_after_not_before(reduced_study, section):
    cfg = reduced_config()
    cfg[section]["lr"] *= 2
    jobs = planned_jobs(reduced_study, cfg)
    rules = rules_of(jobs)
    assert not {r for r in rules if r.startswith("data_")}
    steps = reduced_config()["sft"]["checkpoints"]
    assert {("sft", f"step={s}") for s in steps} <= set(jobs)
    assert {("evaluate", f"model=sft-{s}") for s in steps} <= set(jobs)
    assert {("rl", f"step={s}") for s in steps} <= set(jobs)
    assert "table_sft_trajectory" in rules
    # (spectra and edits follow once the re-run `peak_ood` checkpoint has chosen the donor again,
    # so a dry-run cannot list them yet)
    base_jobs = {("base", ""), ("evaluate", "model=base")}
    if section == "sft":
        assert not base_jobs & set(jobs)
    else:
        assert base_jobs <= set(jobs)
