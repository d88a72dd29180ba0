# RL after SFT: one PPO (or GRPO) run from each chosen SFT checkpoint: models/ppo-<start> (grpo-<start>).
# The wildcard `start` is the SFT step a run starts from (named apart from sft's `step`, so
# `snakemake --dag` shows it).


rule rl:
    input:
        model=S("models/sft-{start}"),
        data=R("data/rl.parquet"),
    output:
        model=directory(S(f"models/{RL_ALGORITHM}-{{start}}")),
        metrics=S(f"logs/{RL_ALGORITHM}-{{start}}/metrics.jsonl"),
    log:
        S(f"logs/rl/{RL_ALGORITHM}-{{start}}.log"),
    benchmark:
        S(f"benchmarks/rl/{RL_ALGORITHM}-{{start}}.tsv")
    priority: 1  # the longest jobs: started before the short ones queued beside them
    conda:
        "../envs/training.yaml"
    threads: cpu_threads("rl")
    resources:
        **res("rl"),
    params:
        code=code("rl.py", "sftrl.ppo", "sftrl.grpo"),
        rl=rl_hparams,
        template=config["model"]["template"],
        dtype=config["model"]["dtype"],
        # <algorithm>-<start>[-<variant>]
        work=lambda wc: at_seed(
            wc.seed,
            f"train/{RL_ALGORITHM}-"
            + "-".join(v for k, v in wc.items() if k != "seed"),
        ),
    script:
        "../scripts/rl.py"


# The RL sweep (`snakemake rl_sweep`, not part of `all`): the same RL from the same checkpoints
# with other settings (`rl_sweep.variants`), to choose the study's RL settings by measurement.
# Its params are rl's: rl_hparams adds the variant's overrides, the work directory follows the output.
use rule rl as rl_variant with:
    output:
        model=directory(S(f"models/{RL_ALGORITHM}-{{start}}-{{variant}}")),
        metrics=S(f"logs/{RL_ALGORITHM}-{{start}}-{{variant}}/metrics.jsonl"),
    log:
        S(f"logs/rl/{RL_ALGORITHM}-{{start}}-{{variant}}.log"),
    benchmark:
        S(f"benchmarks/rl/{RL_ALGORITHM}-{{start}}-{{variant}}.tsv")


rule table_rl_sweep:
    input:
        sft=lambda wc: evals(
            [f"sft-{s}" for s in study.rl_sweep_steps(config)], wc.seed
        ),
        rl=lambda wc: evals(study.rl_sweep_models(config), wc.seed),
        metrics=expand(
            S("logs/{model}/metrics.jsonl"),
            model=study.rl_sweep_models(config),
            allow_missing=True,
        ),
    output:
        csv=S("tables/rl-sweep.csv"),
        md=S("tables/rl-sweep.md"),
    log:
        S("logs/tables/rl-sweep.log"),
    conda:
        "../envs/analysis.yaml"
    resources:
        **res("tables"),
    params:
        code=code("table_rl_sweep.py"),
        variants=RL_VARIANTS,
    script:
        "../scripts/table_rl_sweep.py"


rule table_rl_recovery:
    input:
        sft=lambda wc: evals(study.sft_models(config), wc.seed),
        rl=lambda wc: evals(study.rl_models(config), wc.seed),
    output:
        csv=S("tables/rl-recovery.csv"),
        md=S("tables/rl-recovery.md"),
    log:
        S("logs/tables/rl-recovery.log"),
    conda:
        "../envs/analysis.yaml"
    resources:
        **res("tables"),
    params:
        code=code("table_rl_recovery.py"),
    script:
        "../scripts/table_rl_recovery.py"
