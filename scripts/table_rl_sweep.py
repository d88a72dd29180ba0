"""Rule table_rl_sweep: what each RL setting of the sweep did to its reward and to ID/OOD."""

from pathlib import Path

from sftrl import tables
from sftrl.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    summaries = tables.read_summaries([*sm.input.sft, *sm.input.rl])
    metrics = {Path(path).parent.name: tables.read_metrics(path) for path in sm.input.metrics}
    df = tables.rl_sweep(summaries, metrics, dict(sm.params.variants))
    tables.write_table(df, sm.output.csv, sm.output.md, tables.RL_SWEEP_MARKDOWN, tables.RL_SWEEP_FOOTNOTE)
    print(df)
