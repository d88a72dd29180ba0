# SFT in segments: sft-<step> resumes the run from the previous checkpoint's training state.


rule sft:
    input:
        unpack(sft_inputs),
        data=R("data/sft.parquet"),
    output:
        model=directory(S("models/sft-{step}")),
        state=(
            directory(S("train/sft/state-{step}"))
            if config["sft"]["keep_state"]
            else temp(directory(S("train/sft/state-{step}")))
        ),
    log:
        S("logs/sft/sft-{step}.log"),
    benchmark:
        S("benchmarks/sft/sft-{step}.tsv")
    # The segments are the study's longest chain (base -> sft-... -> the last RL run): a free core
    # takes the next segment before any evaluation, SVD or edit waiting beside it.
    priority: 2
    conda:
        "../envs/training.yaml"
    threads: cpu_threads("sft")
    resources:
        **res("sft"),
    params:
        code=code("sft.py", "sftrl.sft"),
        hp=sft_hparams,
        dtype=config["model"]["dtype"],
        template=config["model"]["template"],
        work=lambda wc: at_seed(wc.seed, f"train/sft/work-{wc.step}"),
        metrics=lambda wc: at_seed(wc.seed, f"logs/sft/sft-{wc.step}.metrics.jsonl"),
    script:
        "../scripts/sft.py"
