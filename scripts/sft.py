"""Rule sft: one segment of the SFT run, up to step {step} (see sftrl.sft)."""

import polars as pl

from sftrl.logs import job_log
from sftrl.models import load_model, load_tokenizer
from sftrl.prompts import get_template
from sftrl.sft import TrainSettings, train_segment

sm = snakemake  # noqa: F821 (injected by Snakemake)
p = sm.params
with job_log(sm.log[0], sm.threads):
    hp = TrainSettings.from_config(p.hp, max_length=p.max_length)
    model = load_model(sm.input.base, dtype=p.dtype)
    tokenizer = load_tokenizer(sm.input.base)
    train_segment(
        model,
        tokenizer,
        pl.read_parquet(sm.input.data),
        hp,
        stop_at=int(sm.wildcards.step),
        model_out=sm.output.model,
        work_dir=p.work,
        resume_from=sm.input.get("state"),
        state_out=sm.output.state,
        metrics_path=p.metrics,
        chat=get_template(p.template).chat,
    )
