"""Rule table_edits: accuracy and recovery % of every spectral edit and layer reset."""

from sftrl import tables
from sftrl.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    summaries = tables.read_summaries([*sm.input.edits, *sm.input.donor_target])
    spectral, layers = tables.edit_tables(summaries, sm.params.layers)
    tables.write_table(spectral, sm.output.uv_csv, sm.output.uv_md, tables.UV_MERGE_MARKDOWN, tables.RECOVERY_FOOTNOTE)
    tables.write_table(
        layers, sm.output.layer_csv, sm.output.layer_md, tables.LAYER_RESET_MARKDOWN, tables.RECOVERY_FOOTNOTE
    )
    print(spectral)
    print(layers)
