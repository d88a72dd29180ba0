"""Rule evaluate: play the fixed ID and OOD hands with one model (see sftrl.evaluate).

eval.batch_size (run-only: memory, not results) comes from the config, not from params."""

from sftrl.evaluate import evaluate_to_files
from sftrl.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    splits = sm.params.splits
    evaluate_to_files(
        sm.input.model,
        sm.wildcards.model,
        dict(zip(splits, sm.input.hands, strict=True)),
        {s: paths for s, paths in zip(splits, zip(sm.output.records, sm.output.summaries, strict=True), strict=True)},
        sm.params.eval,
        sm.config["eval"]["batch_size"],
        sm.params.template,
        sm.params.dtype,
    )
