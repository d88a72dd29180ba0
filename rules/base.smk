# The base model: pretrained here for the tiny study (one per replicate, seed-<n>/models/base), the
# local weights for paper studies (one for every replicate, models/base).


rule base:
    input:
        unpack(base_inputs),
    output:
        directory(BASE("models/base")),
    log:
        BASE("logs/base/base.log"),
    benchmark:
        BASE("benchmarks/base/base.tsv")
    conda:
        "../envs/training.yaml"
    threads: cpu_threads("base")
    resources:
        **res("base"),
    params:
        code=code("base.py"),
        model=base_model_settings,
        train=base_train_settings,
        metrics=BASE("logs/base/metrics.jsonl"),
    script:
        "../scripts/base.py"
