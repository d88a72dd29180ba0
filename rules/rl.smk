# RL after SFT: one PPO (or GRPO) run from each chosen SFT checkpoint: models/ppo-<start> (grpo-<start>).
# The wildcard `start` is the SFT step a run starts from (named apart from sft's `step`, so
# `snakemake --dag` shows it).


rule rl:
    input:
        model=R("models/sft-{start}"),
        data=R("data/rl.parquet"),
    output:
        model=directory(R(f"models/{RL_ALGORITHM}-{{start}}")),
        metrics=R(f"logs/{RL_ALGORITHM}-{{start}}/metrics.jsonl"),
    log:
        R(f"logs/rl/{RL_ALGORITHM}-{{start}}.log"),
    benchmark:
        R(f"benchmarks/rl/{RL_ALGORITHM}-{{start}}.tsv")
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
        work=lambda wc: R(f"train/{RL_ALGORITHM}-" + "-".join(wc)),  # <algorithm>-<start>[-<variant>]
    script:
        "../scripts/rl.py"


# The RL sweep (`snakemake rl_sweep`, not part of `all`): the same RL from the same checkpoints
# with other settings (`rl_sweep.variants`), to choose the study's RL settings by measurement.
# Its params are rl's: rl_hparams adds the variant's overrides, the work directory follows the output.
use rule rl as rl_variant with:
    output:
        model=directory(R(f"models/{RL_ALGORITHM}-{{start}}-{{variant}}")),
        metrics=R(f"logs/{RL_ALGORITHM}-{{start}}-{{variant}}/metrics.jsonl"),
    log:
        R(f"logs/rl/{RL_ALGORITHM}-{{start}}-{{variant}}.log"),
    benchmark:
        R(f"benchmarks/rl/{RL_ALGORITHM}-{{start}}-{{variant}}.tsv")


rule table_rl_sweep:
    input:
        sft=expand(
            R("eval/sft-{step}/{split}.json"),
            step=study.rl_sweep_steps(config),
            split=SPLITS,
        ),
        rl=expand(
            R("eval/{model}/{split}.json"),
            model=study.rl_sweep_models(config),
            split=SPLITS,
        ),
        metrics=expand(
            R("logs/{model}/metrics.jsonl"), model=study.rl_sweep_models(config)
        ),
    output:
        csv=R("tables/rl-sweep.csv"),
        md=R("tables/rl-sweep.md"),
    log:
        R("logs/tables/rl-sweep.log"),
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
        sft=expand(
            R("eval/{model}/{split}.json"),
            model=study.sft_models(config),
            split=SPLITS,
        ),
        rl=expand(
            R("eval/{model}/{split}.json"), model=study.rl_models(config), split=SPLITS
        ),
    output:
        csv=R("tables/rl-recovery.csv"),
        md=R("tables/rl-recovery.md"),
    log:
        R("logs/tables/rl-recovery.log"),
    conda:
        "../envs/analysis.yaml"
    resources:
        **res("tables"),
    params:
        code=code("table_rl_recovery.py"),
    script:
        "../scripts/table_rl_recovery.py"
