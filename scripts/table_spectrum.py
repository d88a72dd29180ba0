"""Rule table_spectrum: mean |dsigma|/sigma and mean principal angle by band and matrix type, per pair."""

from sftrl import tables
from sftrl.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    df = tables.spectrum_summary(list(sm.input))
    tables.write_table(df, sm.output.csv, sm.output.md, tables.SPECTRUM_MARKDOWN)
    print(df)
