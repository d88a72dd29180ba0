"""Rule sft: one segment of the SFT run, up to step {step} (see sftrl.sft).

A job given several GPUs runs on one process per GPU through `accelerate launch` (sftrl.launch).
Run-only settings (sftrl.constants.RUN_ONLY), the launcher and logging come from the config, not
from params: changing them reruns nothing.
"""

from sftrl import launch
from sftrl.constants import RUN_ONLY
from sftrl.logs import job_log
from sftrl.prompts import get_template

sm = snakemake  # noqa: F821 (injected by Snakemake)
p = sm.params
with job_log(sm.log[0], sm.threads):
    spec = dict(
        hp={**p.hp, **{k: sm.config["sft"][k] for k in RUN_ONLY["sft"]}},
        model=sm.input.base,
        dtype=p.dtype,
        data=sm.input.data,
        stop_at=int(sm.wildcards.step),
        model_out=sm.output.model,
        work_dir=p.work,
        resume_from=sm.input.get("state"),
        state_out=sm.output.state,
        metrics=p.metrics,
        chat=get_template(p.template).chat,
    )
    launch.run_rule("sft", spec, sm)
