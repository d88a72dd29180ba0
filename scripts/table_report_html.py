"""Rule report_table: a result table (its Markdown view) as a self-contained HTML page for the report."""

from sftrl import tables
from sftrl.atomic import write_text
from sftrl.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    with open(sm.input[0]) as fh:
        markdown = fh.read()
    page = tables.report_table_html(markdown, sm.params.title, caption=f"Source: {sm.input[0]}", source=sm.input[0])
    write_text(page, sm.output[0])
    print(f"wrote {sm.output[0]}")
