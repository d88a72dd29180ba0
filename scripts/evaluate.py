"""Rule evaluate: play the fixed ID and OOD hands with one model (see sftrl.evaluate).

eval.batch_size (run-only: memory, not results) comes from the config, not from params."""

from sftrl.evaluate import evaluate_for_job
from sftrl.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    evaluate_for_job(sm, sm.input.model, sm.wildcards.model)
