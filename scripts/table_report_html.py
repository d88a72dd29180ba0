"""Rule report_table: a result table as a self-contained HTML page for the report, rendered from the
table's data (its CSV) through the same view as its Markdown file (sftrl.tables.VIEWS)."""

from sftrl import tables
from sftrl.atomic import write_text
from sftrl.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    df = tables.read_table(sm.input[0])
    view, footnote = tables.table_view(sm.wildcards.table, df)
    page = tables.report_page(df, view, sm.params.title, caption=f"Source: {sm.input[0]}", footnote=footnote)
    write_text(page, sm.output[0])
    print(f"wrote {sm.output[0]}")
