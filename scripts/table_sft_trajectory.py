"""Rule table_sft_trajectory: ID/OOD accuracy of the base and every SFT checkpoint."""

from sftrl import tables
from sftrl.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    df = tables.sft_trajectory(tables.read_summaries(sm.input.summaries))
    tables.write_table(df, sm.output.csv, sm.output.md, tables.TRAJECTORY_MARKDOWN, tables.TRAJECTORY_FOOTNOTE)
    print(df)
