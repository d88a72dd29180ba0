# Recovery edits without RL: UV merge, sigma swap, triplet swap and layer reset from a donor.


rule edit:
    input:
        unpack(edit_inputs),
        hands=expand(R("data/eval-{split}.parquet"), split=SPLITS),
    output:
        **edited_model(),
        records=[R(f"eval/{EDITED}/{split}.parquet") for split in SPLITS],
        summaries=[R(f"eval/{EDITED}/{split}.json") for split in SPLITS],
    log:
        R(f"logs/edits/{EDITED}.log"),
    benchmark:
        R(f"benchmarks/edits/{EDITED}.tsv")
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
        work=R(f"train/edits/{EDITED}"),
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
        edits=edit_eval_targets,
        donor_target=lambda wc: expand(
            R("eval/{model}/{split}.json"),
            model=sorted(
                {study.donor_model(config, peak_model), *study.study_models(config)}
            ),
            split=SPLITS,
        ),
    output:
        uv_csv=R("tables/uv-merge.csv"),
        uv_md=R("tables/uv-merge.md"),
        layer_csv=R("tables/layer-reset.csv"),
        layer_md=R("tables/layer-reset.md"),
    log:
        R("logs/tables/edits.log"),
    conda:
        "../envs/analysis.yaml"
    resources:
        **res("tables"),
    params:
        code=code("table_edits.py"),
        layers=study.layer_ids(config, DEPTH),
    script:
        "../scripts/table_edits.py"
