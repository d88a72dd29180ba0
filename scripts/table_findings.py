"""Rule table_findings: the study's four findings, measured in every replicate, with intervals over
seeds and a verdict each (sftrl.tables.findings)."""

import re
from collections import defaultdict

from sftrl import tables
from sftrl.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    per_seed = defaultdict(dict)  # seed -> table name -> frame
    for key in sm.input.keys():
        name, seed = re.fullmatch(r"(\w+)_seed(\d+)", key).groups()
        per_seed[int(seed)][name.replace("_", "-")] = tables.read_table(sm.input[key])
    df = tables.findings(dict(per_seed))
    view, footnote = tables.VIEWS["findings"]
    tables.write_table(df, sm.output.csv, sm.output.md, view, footnote)
    print(df)
