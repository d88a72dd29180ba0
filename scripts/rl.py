"""Rule rl: PPO (the study's algorithm) or GRPO from one SFT checkpoint (see sftrl.ppo).

A job given several GPUs runs on one process per GPU through `accelerate launch` (sftrl.launch).
"""

from sftrl import launch
from sftrl.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
p = sm.params
with job_log(sm.log[0], sm.threads):
    spec = dict(
        rl=p.rl,
        model=sm.input.model,
        data=sm.input.data,
        template=p.template,
        out=sm.output.model,
        work_dir=p.work,
        metrics=sm.output.metrics,
        dtype=p.dtype,
    )
    result = launch.run(
        "rl",
        spec,
        processes=getattr(sm.resources, "gpu", 0),
        deepspeed=p.distributed["deepspeed"]["rl"],
        launcher=p.distributed["launcher"],
        spec_dir=p.work,
        threads=sm.threads,
    )
    if result is not None:
        print(result)
