"""Rule rl: PPO (the study's algorithm) or GRPO from one SFT checkpoint (see sftrl.ppo)."""

import polars as pl

from sftrl.logs import job_log
from sftrl.ppo import PPOConfig, train_ppo

sm = snakemake  # noqa: F821 (injected by Snakemake)
p = sm.params
with job_log(sm.log[0], sm.threads):
    cfg = PPOConfig.from_dict({k: v for k, v in p.rl.items() if k not in ("algorithm", "num_generations")})
    common = dict(
        model_dir=sm.input.model,
        rl_hands=pl.read_parquet(sm.input.data),
        template=p.template,
        cfg=cfg,
        out_dir=sm.output[0],
        work_dir=p.work,
        metrics_path=p.metrics,
        dtype=p.dtype,
    )
    if p.rl["algorithm"] == "grpo":
        from sftrl.grpo import train_grpo

        print(train_grpo(num_generations=p.rl.get("num_generations", 8), **common))
    else:
        print(train_ppo(**common))
