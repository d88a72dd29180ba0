# Recovery edits without RL: UV merge, sigma swap, triplet swap and layer reset from a donor.


rule edit:
    input:
        unpack(edit_inputs),
    output:
        edited(directory(R("models/{method}-{donor}-into-{target}-{param}"))),
    log:
        R("logs/edits/{method}-{donor}-into-{target}-{param}.log"),
    benchmark:
        R("benchmarks/edits/{method}-{donor}-into-{target}-{param}.tsv")
    conda:
        "../envs/training.yaml"
    threads: config["threads"]
    resources:
        **res("edit"),
    params:
        code=code("edit.py"),
        types=config["edits"]["types"],
        embeddings=config["edits"]["layer_reset_embeddings"],
        edit=lambda wc: study.edit_job(
            f"{wc.method}-{wc.donor}-into-{wc.target}-{wc.param}", DEPTH
        ),
    script:
        "../scripts/edit.py"


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
