# Result tables (polars -> CSV and Markdown): each replicate's (seed-<n>/tables/), then the
# study's across seeds (tables/), with the seed-level table beside it (tables/<name>.seeds.csv).


rule table_sft_trajectory:
    input:
        summaries=lambda wc: evals(study.trajectory_models(config), wc.seed),
    output:
        csv=S("tables/sft-trajectory.csv"),
        md=S("tables/sft-trajectory.md"),
    log:
        S("logs/tables/sft-trajectory.log"),
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
        csv=S("tables/stages.csv"),
        md=S("tables/stages.md"),
    log:
        S("logs/tables/stages.log"),
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
            at_seed(wc.seed, f"spectrum/{a}--{b}.index.parquet")
            for a, b in study.profile_pairs(config, peak_of(wc.seed))
        ],
    output:
        S("tables/spectrum-profile.csv"),
    log:
        S("logs/tables/spectrum-profile.log"),
    conda:
        "../envs/analysis.yaml"
    resources:
        **res("tables"),
    params:
        code=code("table_spectrum_profile.py"),
    script:
        "../scripts/table_spectrum_profile.py"


# --- across seeds (sftrl.tables.seeds) ---------------------------------------------------------


# The study's table from every replicate's: means, 95% t-intervals over seeds and each seed's value
# (with one seed, that seed's table), and the seed-level table of every replicate's rows. Its
# inputs are the seeds' tables: adding or removing a seed reruns this, never another seed's jobs.
rule table_seeds:
    input:
        unpack(seed_tables),
    output:
        csv=R("tables/{table}.csv"),
        md=R("tables/{table}.md"),
        seeds=R("tables/{table}.seeds.csv"),
    log:
        R("logs/tables/{table}.log"),
    wildcard_constraints:
        table="|".join(n for n in study.SEEDED_RESULT if n != "spectrum-profile"),
    conda:
        "../envs/analysis.yaml"
    resources:
        **res("tables"),
    params:
        code=code("table_seeds.py"),
        key_columns=lambda wc: study.SEEDED_RESULT[wc.table].keys,
        measures=lambda wc: study.SEEDED_RESULT[wc.table].measures,
    script:
        "../scripts/table_seeds.py"


# The per-index spectra the spectrum plots draw: a CSV only (no view), combined the same way.
use rule table_seeds as table_seeds_profile with:
    output:
        csv=R("tables/{table}.csv"),
        seeds=R("tables/{table}.seeds.csv"),
    log:
        R("logs/tables/{table}.log"),
    wildcard_constraints:
        table="spectrum-profile",


# --- the study's findings across seeds (sftrl.tables.findings) --------------------------------


rule table_findings:
    input:
        unpack(findings_inputs),
    output:
        csv=R("tables/findings.csv"),
        md=R("tables/findings.md"),
    log:
        R("logs/tables/findings.log"),
    conda:
        "../envs/analysis.yaml"
    resources:
        **res("tables"),
    params:
        code=code("table_findings.py"),
    script:
        "../scripts/table_findings.py"
