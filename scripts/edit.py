"""Rule edit: one UV merge / sigma swap / triplet swap / layer reset (see sftrl.edits), then the
edited model's evaluation (see sftrl.evaluate). The edit comes parsed in params.edit
(sftrl.study.edit_job). The edited model lives in params.work for the job's length unless
edits.keep makes it an output (models/<edited>/). eval.batch_size (run-only) comes from the config.

At tiny scale an edit takes ~1 s and starting a job several: one job per edited model, not two.
"""

import shutil
from pathlib import Path

from sftrl.edits import edit_checkpoint, layer_reset
from sftrl.evaluate import evaluate_for_job
from sftrl.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
edit, out = sm.params.edit, Path(sm.output.get("model") or sm.params.work)
with job_log(sm.log[0], sm.threads):
    shutil.rmtree(out, ignore_errors=True)  # a failed job's leftovers (the work dir is this job's own)
    try:
        if edit["method"] == "layer-reset":
            report = layer_reset(sm.input.target, sm.input.donor, out, edit["layers"], sm.params.embeddings)
        else:
            report = edit_checkpoint(
                sm.input.target,
                sm.input.donor,
                out,
                edit["method"],
                edit["top"],
                edit["bottom"],
                sm.params.types,
                svd_target=sm.input.get("svd_target"),
                svd_donor=sm.input.get("svd_donor"),
            )
        print(report)
        evaluate_for_job(sm, out, edit["name"])
    finally:
        if "model" not in sm.output.keys():
            shutil.rmtree(out, ignore_errors=True)
