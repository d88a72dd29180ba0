# Generated game data: SFT examples, RL prompts, fixed evaluation hands, tiny pretraining data.


rule data_sft:
    output:
        R("data/sft.parquet"),
    log:
        R("logs/data/sft.log"),
    conda:
        "../envs/analysis.yaml"
    resources:
        **res("data"),
    params:
        code=code("data.py"),
        kind="sft",
        n=config["data"]["sft_size"],
        answer=config["data"]["answer"],
        seed=config["data"]["seed"],
        template=config["model"]["template"],
        holdout=holdout(),
    script:
        "../scripts/data.py"


rule data_rl:
    output:
        R("data/rl.parquet"),
    log:
        R("logs/data/rl.log"),
    conda:
        "../envs/analysis.yaml"
    resources:
        **res("data"),
    params:
        code=code("data.py"),
        kind="rl",
        n=config["data"]["rl_size"],
        seed=config["data"]["seed"] + 1,
        template=config["model"]["template"],
        holdout=holdout(),
    script:
        "../scripts/data.py"


rule data_eval:
    output:
        R("data/eval-{split}.parquet"),
    log:
        R("logs/data/eval-{split}.log"),
    conda:
        "../envs/analysis.yaml"
    resources:
        **res("data"),
    params:
        code=code("data.py"),
        kind=lambda wc: f"eval-{wc.split}",
        n=config["data"]["eval_size"],
        seed=config["data"]["eval_seed"],
        template=config["model"]["template"],
        holdout=holdout(),
    script:
        "../scripts/data.py"


rule data_pretrain:
    output:
        R("data/pretrain.parquet"),
    log:
        R("logs/data/pretrain.log"),
    conda:
        "../envs/analysis.yaml"
    resources:
        **res("data"),
    params:
        code=code("data.py"),
        kind="pretrain",
        n=config["data"].get("pretrain_size", 0),
        answer=config["data"]["answer"],
        feedback_fraction=config["data"].get("pretrain_feedback", 0.0),
        wrapped_fraction=config["data"].get("pretrain_wrapped", 0.0),
        seed=config["data"]["seed"] + 2,
        template=config["model"]["template"],
        holdout=holdout(),
    script:
        "../scripts/data.py"
