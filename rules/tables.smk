# Result tables (polars -> CSV and Markdown).


rule table_sft_trajectory:
    input:
        summaries=expand(
            R("eval/{model}/{split}.json"), model=trajectory_models(), split=SPLITS
        ),
    output:
        csv=R("tables/sft-trajectory.csv"),
        md=R("tables/sft-trajectory.md"),
    log:
        R("logs/tables/sft-trajectory.log"),
    resources:
        **res("tables"),
    script:
        "../scripts/table_sft_trajectory.py"
