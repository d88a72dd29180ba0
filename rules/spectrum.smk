# Spectral diagnostics: one SVD per model, reused by every comparison and edit.


checkpoint peak_ood:
    input:
        expand(R("eval/{model}/ood.json"), model=study.sft_models(config)),
    output:
        R("eval/peak-ood.json"),
    log:
        R("logs/tables/peak-ood.log"),
    conda:
        "../envs/analysis.yaml"
    resources:
        **res("tables"),
    params:
        code=code("peak_ood.py"),
    script:
        "../scripts/peak_ood.py"


rule svd:
    input:
        R("models/{model}"),
    output:
        R("svd/{model}.safetensors"),
    log:
        R("logs/svd/{model}.log"),
    benchmark:
        R("benchmarks/svd/{model}.tsv")
    conda:
        "../envs/training.yaml"
    threads: cpu_threads("svd")
    resources:
        **res("svd"),
    params:
        code=code("svd.py"),
        types=config["spectrum"]["types"],
        factors=config["spectrum"]["factors"],
    script:
        "../scripts/svd.py"


rule spectrum:
    input:
        unpack(svd_inputs),
    output:
        summary=R("spectrum/{a}--{b}.parquet"),
        index=R("spectrum/{a}--{b}.index.parquet"),
    log:
        R("logs/spectrum/{a}--{b}.log"),
    benchmark:
        R("benchmarks/spectrum/{a}--{b}.tsv")
    conda:
        "../envs/training.yaml"
    threads: cpu_threads("spectrum")
    resources:
        **res("spectrum"),
    params:
        code=code("spectrum.py"),
        types=config["spectrum"]["types"],
        k_frac=config["spectrum"]["k_frac"],
        band=config["spectrum"]["band"],
    script:
        "../scripts/spectrum.py"


rule table_spectrum:
    input:
        spectrum_targets,
    output:
        csv=R("tables/spectrum.csv"),
        md=R("tables/spectrum.md"),
    log:
        R("logs/tables/spectrum.log"),
    conda:
        "../envs/analysis.yaml"
    resources:
        **res("tables"),
    params:
        code=code("table_spectrum.py"),
    script:
        "../scripts/table_spectrum.py"
