"""Rule table_stages: the study's stage table (Premax, Moderate, RL × ID/OOD, recovery %)."""

import json

from sftrl import tables
from sftrl.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    with open(sm.input.peak) as fh:
        premax = json.load(fh)["model"]
    summaries = tables.read_summaries(sm.input.summaries)
    df = tables.stage_table(summaries, premax=premax, moderate=sm.params.moderate, rl=sm.params.rl)
    tables.write_table(df, sm.output.csv, sm.output.md, tables.STAGES_MARKDOWN, tables.RECOVERY_FOOTNOTE)
    print(df)
