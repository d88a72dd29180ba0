"""Rule rl: PPO (the study's algorithm) or GRPO from one SFT checkpoint (see sftrl.ppo).

A job given several GPUs runs on one process per GPU through `accelerate launch` (sftrl.launch).
"""

from sftrl import launch
from sftrl.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
p = sm.params
gpus = getattr(sm.resources, "gpu", 0)
with job_log(sm.log[0], sm.threads):
    spec = dict(
        rl=p.rl,
        model=sm.input.model,
        data=sm.input.data,
        template=p.template,
        out=sm.output[0],
        work_dir=p.work,
        metrics=p.metrics,
        dtype=p.dtype,
        threads=max(1, sm.threads // max(1, gpus)),  # per process
    )
    deepspeed = p.distributed["deepspeed"]["rl"]
    result = launch.run(
        "rl",
        spec,
        processes=gpus,
        deepspeed=deepspeed,
        launcher=p.distributed["launcher"],
        spec_dir=p.work,
    )
    if result is not None:
        print(result)
