# Spectral diagnostics: one SVD per model, reused by every comparison and edit (per replicate).


checkpoint peak_ood:
    input:
        lambda wc: evals(study.sft_models(config), wc.seed, ["ood"]),
    output:
        S("eval/peak-ood.json"),
    log:
        S("logs/tables/peak-ood.log"),
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
        S("models/{model}"),
    output:
        S("svd/{model}.safetensors"),
    log:
        S("logs/svd/{model}.log"),
    benchmark:
        S("benchmarks/svd/{model}.tsv")
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


# Local weights: the base is every replicate's, decomposed once (svd/base.safetensors).
if SHARED_BASE:

    use rule svd as svd_base with:
        input:
            R("models/{model}"),
        output:
            R("svd/{model}.safetensors"),
        log:
            R("logs/svd/{model}.log"),
        benchmark:
            R("benchmarks/svd/{model}.tsv")
        wildcard_constraints:
            model="base",


rule spectrum:
    input:
        unpack(svd_inputs),
    output:
        summary=S("spectrum/{a}--{b}.parquet"),
        index=S("spectrum/{a}--{b}.index.parquet"),
    log:
        S("logs/spectrum/{a}--{b}.log"),
    benchmark:
        S("benchmarks/spectrum/{a}--{b}.tsv")
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
        lambda wc: seed_spectrum_targets(wc.seed),
    output:
        csv=S("tables/spectrum.csv"),
        md=S("tables/spectrum.md"),
    log:
        S("logs/tables/spectrum.log"),
    conda:
        "../envs/analysis.yaml"
    resources:
        **res("tables"),
    params:
        code=code("table_spectrum.py"),
    script:
        "../scripts/table_spectrum.py"
