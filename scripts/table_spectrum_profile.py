"""Rule table_spectrum_profile: per-index |dsigma|/sigma and principal angles, mean over layers (plot data)."""

from sftrl import tables
from sftrl.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    df = tables.spectrum_profile(list(sm.input))
    tables.write_csv(df, sm.output[0])
    print(df)
