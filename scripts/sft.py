"""Rule sft: one segment of the SFT run, up to step {step} (see sftrl.sft).

A job given several GPUs runs on one process per GPU through `accelerate launch` (sftrl.launch).
Run-only settings (sftrl.constants.RUN_ONLY), the launcher and logging come from the config, not
from params: changing them reruns nothing.
"""

from pathlib import Path

from sftrl import launch
from sftrl.constants import RUN_ONLY
from sftrl.logs import job_log, tensorboard_dir
from sftrl.prompts import get_template

sm = snakemake  # noqa: F821 (injected by Snakemake)
p = sm.params
dist = sm.config["distributed"]
with job_log(sm.log[0], sm.threads):
    deepspeed = launch.deepspeed_config(dist["deepspeed"]["sft"], Path(sm.scriptdir).parent)
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
        deepspeed=deepspeed,
        report_to=sm.config.get("logging", {}).get("report_to", "none"),
        logging_dir=tensorboard_dir(sm.log[0]),
    )
    launch.run(
        "sft",
        spec,
        processes=launch.gpu_count(sm.resources),
        deepspeed=deepspeed,
        launcher=dist["launcher"],
        spec_dir=p.work,
        threads=sm.threads,
    )
