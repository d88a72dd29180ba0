"""Rule table_benchmarks: run time and peak memory of every job that trains, evaluates or decomposes."""

from pathlib import Path

from sftrl import tables
from sftrl.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    # every record of this study: the shared jobs' (benchmarks/<stage>/<job>.tsv, beside the
    # summary) and each replicate's (seed-<n>/benchmarks/...). The inputs are the study's results,
    # so every benchmarked job has run.
    here = Path(sm.output.csv).parent
    records = {None: sorted(here.glob("*/*.tsv"))}
    for seed in sm.params.seeds:
        records[seed] = sorted((here.parent / f"seed-{seed}" / "benchmarks").glob("*/*.tsv"))
    df = tables.benchmark_table(records)
    tables.write_table(df, sm.output.csv, sm.output.md, tables.BENCHMARK_MARKDOWN, tables.BENCHMARK_FOOTNOTE)
    print(df)
