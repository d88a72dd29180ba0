"""Rule table_benchmarks: run time and peak memory of every job that trains, evaluates or decomposes."""

from pathlib import Path

from sftrl import tables
from sftrl.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    # every record of this study (benchmarks/<stage>/<job>.tsv, beside the summary): the inputs
    # are the study's results, so every benchmarked job has run
    records = sorted(Path(sm.output.csv).parent.glob("*/*.tsv"))
    df = tables.benchmark_table(records)
    tables.write_table(df, sm.output.csv, sm.output.md, tables.BENCHMARK_MARKDOWN, tables.BENCHMARK_FOOTNOTE)
    print(df)
