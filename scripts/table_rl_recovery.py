"""Rule table_rl_recovery: SFT vs RL accuracy per starting checkpoint, with recovery %."""

from sftrl import tables
from sftrl.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    df = tables.rl_recovery(tables.read_summaries([*sm.input.sft, *sm.input.rl]))
    tables.write_table(df, sm.output.csv, sm.output.md, tables.RL_RECOVERY_MARKDOWN, tables.RECOVERY_FOOTNOTE)
    print(df)
