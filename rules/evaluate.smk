# ID/OOD evaluation of any model with the study's multi-turn verifier.


rule evaluate:
    input:
        model=R("models/{model}"),
        hands=R("data/eval-{split}.parquet"),
    output:
        records=R("eval/{model}/{split}.parquet"),
        summary=R("eval/{model}/{split}.json"),
    log:
        R("logs/evaluate/{model}-{split}.log"),
    threads: config["threads"]
    resources:
        **res("evaluate"),
    params:
        eval=config["eval"],
        template=config["model"]["template"],
        dtype=config["model"]["dtype"],
    script:
        "../scripts/evaluate.py"
