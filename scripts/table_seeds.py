"""Rules table_seeds and table_seeds_profile: the study's table across seeds from each replicate's
(sftrl.tables.seeds), and the seed-level table of every replicate's rows."""

from sftrl import tables
from sftrl.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    per_seed = tables.read_seed_tables({int(key.removeprefix("seed")): sm.input[key] for key in sm.input.keys()})
    combined, by_seed = tables.combine_seeds(per_seed, sm.params.key_columns, sm.params.measures)
    tables.write_csv(by_seed, sm.output.seeds)
    if "md" in sm.output.keys():
        view, footnote = tables.table_view(sm.wildcards.table, combined)
        tables.write_table(combined, sm.output.csv, sm.output.md, view, footnote)
    else:
        tables.write_csv(combined, sm.output.csv)
    print(f"{len(per_seed)} seed(s): {combined.height} rows, {by_seed.height} seed-level rows")
    print(combined)
