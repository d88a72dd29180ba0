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
    params:
        eval=config["eval"],
        template=config["model"]["template"],
        dtype=config["model"]["dtype"],
    threads: config["threads"]
    script:
        "../scripts/evaluate.py"
