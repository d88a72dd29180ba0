# ID/OOD evaluation of any model with the study's multi-turn verifier (per replicate, seed-<n>/eval/). One job per model plays
# both splits: the model is loaded once (job start-up dominates a tiny model's evaluation).


rule evaluate:
    input:
        model=S("models/{model}"),
        hands=expand(R("data/eval-{split}.parquet"), split=SPLITS),
    output:
        records=expand(
            S("eval/{model}/{split}.parquet"), split=SPLITS, allow_missing=True
        ),
        summaries=expand(
            S("eval/{model}/{split}.json"), split=SPLITS, allow_missing=True
        ),
    log:
        S("logs/evaluate/{model}.log"),
    benchmark:
        S("benchmarks/evaluate/{model}.tsv")
    conda:
        "../envs/training.yaml"
    threads: cpu_threads("evaluate")
    resources:
        **res("evaluate"),
    params:
        code=code("evaluate.py"),
        splits=SPLITS,
        eval=results_settings("eval"),
        template=config["model"]["template"],
        dtype=config["model"]["dtype"],
    script:
        "../scripts/evaluate.py"


# Local weights: the base is every replicate's, evaluated once (eval/base/ beside the data).
if SHARED_BASE:

    use rule evaluate as evaluate_base with:
        input:
            model=R("models/{model}"),
            hands=expand(R("data/eval-{split}.parquet"), split=SPLITS),
        output:
            records=expand(R("eval/{{model}}/{split}.parquet"), split=SPLITS),
            summaries=expand(R("eval/{{model}}/{split}.json"), split=SPLITS),
        log:
            R("logs/evaluate/{model}.log"),
        benchmark:
            R("benchmarks/evaluate/{model}.tsv")
        wildcard_constraints:
            model="base",
