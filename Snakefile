# sftrl: SFT vs RL fine-tuning, OOD forgetting and singular-vector rotation (arXiv 2508.16546).
# This file is a table of contents; each stage lives in rules/<stage>.smk, all logic in src/sftrl.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/base.smk"
include: "rules/sft.smk"
include: "rules/rl.smk"
include: "rules/evaluate.smk"
include: "rules/spectrum.smk"
include: "rules/edits.smk"
include: "rules/tables.smk"
include: "rules/report.smk"


# Only the aggregate targets run in the Snakemake process itself. Every rule that does work, the
# cheap data and table rules included, is a cluster job under an executor such as SLURM: login
# nodes are often not meant for computation, and the data rules of a paper config write ~1M rows.
localrules:
    all,
    all_data,
    all_sft,
    all_rl,
    rl_sweep,
    all_eval,
    all_spectra,
    all_edits,
    all_plots,


rule all:
    input:
        expand(R("data/{name}.parquet"), name=DATA_SETS),
        eval_targets(),
        table_targets(),
        spectrum_targets,
        edit_eval_targets,
        plot_targets(),
        report_targets(),


# Named partial targets: `snakemake all_data`, `snakemake all_sft`, ...


rule all_data:
    input:
        expand(R("data/{name}.parquet"), name=DATA_SETS),


rule all_sft:
    input:
        [model_dir(m, seed) for seed in SEEDS for m in study.sft_models(config)],


rule all_rl:
    input:
        [model_dir(m, seed) for seed in SEEDS for m in study.rl_models(config)],


# The RL sweep that chose the RL settings (rl_sweep in the config): tables/rl-sweep.md.
rule rl_sweep:
    input:
        R("tables/rl-sweep.md"),


rule all_eval:
    input:
        eval_targets(),


rule all_spectra:
    input:
        spectrum_targets,
        R("tables/spectrum.md"),


rule all_edits:
    input:
        edit_eval_targets,
        R("tables/uv-merge.md"),
        R("tables/layer-reset.md"),


rule all_plots:
    input:
        plot_targets(),
        report_targets(),
