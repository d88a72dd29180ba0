"""Checkpoint peak_ood: the SFT checkpoint with the highest OOD accuracy (ties: the earliest)."""

import json

from sftrl import tables
from sftrl.atomic import write_text
from sftrl.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    peak = tables.peak_ood(tables.read_summaries(sm.input))
    write_text(json.dumps(peak, indent=2) + "\n", sm.output[0])
    print(peak)
