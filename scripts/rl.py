"""Rule rl: PPO (the study's algorithm) or GRPO from one SFT checkpoint (see sftrl.ppo).

A job given several GPUs runs on one process per GPU through `accelerate launch` (sftrl.launch).
Run-only settings (sftrl.constants.RUN_ONLY), the launcher and logging come from the config, not
from params: changing them reruns nothing (a sweep variant's own run-only keys are params).
"""

from sftrl import launch
from sftrl.constants import RUN_ONLY
from sftrl.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
p = sm.params
with job_log(sm.log[0], sm.threads):
    spec = dict(
        rl={**{k: sm.config["rl"][k] for k in RUN_ONLY["rl"] if k in sm.config["rl"]}, **p.rl},
        model=sm.input.model,
        data=sm.input.data,
        template=p.template,
        out=sm.output.model,
        work_dir=p.work,
        metrics=sm.output.metrics,
        dtype=p.dtype,
    )
    result = launch.run_rule("rl", spec, sm)
    if result is not None:
        print(result)
