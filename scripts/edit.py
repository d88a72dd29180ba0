"""Rule edit: one UV merge / sigma swap / triplet swap / layer reset (see sftrl.edits); the edit
comes parsed in params.edit (sftrl.study.edit_job)."""

from sftrl.edits import edit_checkpoint, layer_reset
from sftrl.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
edit = sm.params.edit
with job_log(sm.log[0], sm.threads):
    if edit["method"] == "layer-reset":
        report = layer_reset(sm.input.target, sm.input.donor, sm.output[0], edit["layers"], sm.params.embeddings)
    else:
        report = edit_checkpoint(
            sm.input.target,
            sm.input.donor,
            sm.output[0],
            edit["method"],
            edit["top"],
            edit["bottom"],
            sm.params.types,
            svd_target=sm.input.get("svd_target"),
            svd_donor=sm.input.get("svd_donor"),
        )
    print(report)
