# RL after SFT: one PPO (or GRPO) run from each chosen SFT checkpoint.


rule rl:
    input:
        model=R("models/sft-{step}"),
        data=R("data/rl.parquet"),
    output:
        directory(R("models/ppo-{step}")),
    log:
        R("logs/rl/ppo-{step}.log"),
    conda:
        "../envs/training.yaml"
    threads: config["threads"]
    resources:
        **res("rl"),
    params:
        rl=rl_hparams(),
        distributed=config["distributed"],
        template=config["model"]["template"],
        dtype=config["model"]["dtype"],
        work=lambda wc: R(f"train/ppo-{wc.step}"),
        metrics=lambda wc: R(f"logs/ppo-{wc.step}/metrics.jsonl"),
    script:
        "../scripts/rl.py"


rule table_rl_recovery:
    input:
        sft=expand(R("eval/{model}/{split}.json"), model=sft_models(), split=SPLITS),
        rl=expand(R("eval/{model}/{split}.json"), model=rl_models(), split=SPLITS),
    output:
        csv=R("tables/rl-recovery.csv"),
        md=R("tables/rl-recovery.md"),
    log:
        R("logs/tables/rl-recovery.log"),
    conda:
        "../envs/analysis.yaml"
    resources:
        **res("tables"),
    script:
        "../scripts/table_rl_recovery.py"
