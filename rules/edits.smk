# Recovery edits without RL: UV merge, sigma swap, triplet swap and layer reset from a donor.


rule edit:
    input:
        unpack(edit_inputs),
        hands=expand(R("data/eval-{split}.parquet"), split=SPLITS),
    output:
        **edited_model(),
        records=[S(f"eval/{EDITED}/{split}.parquet") for split in SPLITS],
        summaries=[S(f"eval/{EDITED}/{split}.json") for split in SPLITS],
    log:
        S(f"logs/edits/{EDITED}.log"),
    benchmark:
        S(f"benchmarks/edits/{EDITED}.tsv")
    conda:
        "../envs/training.yaml"
    threads: cpu_threads("edit")
    resources:
        **res("edit"),
    params:
        code=code("edit.py"),
        types=config["edits"]["types"],
        embeddings=config["edits"]["layer_reset_embeddings"],
        edit=lambda wc: study.edit_job(
            f"{wc.method}-{wc.donor}-into-{wc.target}-{wc.param}", DEPTH
        ),
        work=S(f"train/edits/{EDITED}"),
        splits=SPLITS,
        eval=results_settings("eval"),
        template=config["model"]["template"],
        dtype=config["model"]["dtype"],
    script:
        "../scripts/edit.py"


# An edited model's evaluation is the edit job's (above), never the evaluate rule's.
ruleorder: edit > evaluate


rule table_edits:
    input:
        edits=lambda wc: seed_edit_targets(wc.seed),
        donor_target=lambda wc: evals(
            sorted(
                {
                    study.donor_model(config, peak_of(wc.seed)),
                    *study.study_models(config),
                }
            ),
            wc.seed,
        ),
    output:
        uv_csv=S("tables/uv-merge.csv"),
        uv_md=S("tables/uv-merge.md"),
        layer_csv=S("tables/layer-reset.csv"),
        layer_md=S("tables/layer-reset.md"),
    log:
        S("logs/tables/edits.log"),
    conda:
        "../envs/analysis.yaml"
    resources:
        **res("tables"),
    params:
        code=code("table_edits.py"),
        layers=study.layer_ids(config, DEPTH),
    script:
        "../scripts/table_edits.py"
