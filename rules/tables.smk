# Result tables (polars -> CSV and Markdown).


rule table_sft_trajectory:
    input:
        summaries=expand(
            R("eval/{model}/{split}.json"),
            model=study.trajectory_models(config),
            split=SPLITS,
        ),
    output:
        csv=R("tables/sft-trajectory.csv"),
        md=R("tables/sft-trajectory.md"),
    log:
        R("logs/tables/sft-trajectory.log"),
    conda:
        "../envs/analysis.yaml"
    resources:
        **res("tables"),
    params:
        code=code("table_sft_trajectory.py"),
    script:
        "../scripts/table_sft_trajectory.py"


# --- the stage table (docs/study.md §9) ----------------------------------------------------------


rule table_stages:
    input:
        unpack(stage_inputs),
    output:
        csv=R("tables/stages.csv"),
        md=R("tables/stages.md"),
    log:
        R("logs/tables/stages.log"),
    conda:
        "../envs/analysis.yaml"
    resources:
        **res("tables"),
    params:
        code=code("table_stages.py"),
        moderate=study.moderate_model(config),
        rl=study.moderate_rl_model(config),
    script:
        "../scripts/table_stages.py"


# --- per-index spectra for the plots ----------------------------------------------------------


rule table_spectrum_profile:
    input:
        lambda wc: [
            R(f"spectrum/{a}--{b}.index.parquet")
            for a, b in study.profile_pairs(config, peak_model)
        ],
    output:
        R("tables/spectrum-profile.csv"),
    log:
        R("logs/tables/spectrum-profile.log"),
    conda:
        "../envs/analysis.yaml"
    resources:
        **res("tables"),
    params:
        code=code("table_spectrum_profile.py"),
    script:
        "../scripts/table_spectrum_profile.py"
