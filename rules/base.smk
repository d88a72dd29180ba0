# The base model: pretrained here for the tiny study, the local weights for paper studies.


rule base:
    input:
        unpack(base_inputs),
    output:
        directory(R("models/base")),
    log:
        R("logs/base/base.log"),
    benchmark:
        R("benchmarks/base/base.tsv")
    conda:
        "../envs/training.yaml"
    threads: cpu_threads("base")
    resources:
        **res("base"),
    params:
        code=code("base.py"),
        model=config["model"],
        train=config.get("base"),
        metrics=R("logs/base/metrics.jsonl"),
    script:
        "../scripts/base.py"
