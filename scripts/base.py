"""Rule base: pretrain the tiny base model, or bring the local weights into models/base."""

import polars as pl

from sftrl.logs import job_log
from sftrl.models import build_tiny_model, build_tiny_tokenizer, count_parameters, make_base
from sftrl.pretrain import pretrain
from sftrl.sft import TrainSettings

sm = snakemake  # noqa: F821 (injected by Snakemake)
p = sm.params
with job_log(sm.log[0], sm.threads):
    if p.model["source"] == "local":
        make_base({"model": p.model}, sm.output[0])
    else:
        arch = p.model["tiny"]
        tokenizer = build_tiny_tokenizer()
        model = build_tiny_model(arch, tokenizer, seed=arch["seed"])
        print(f"tiny model: {count_parameters(model):,} parameters, vocabulary {len(tokenizer)}")
        hp = TrainSettings.from_config(p.train, max_length=arch["max_position_embeddings"])
        pretrain(model, tokenizer, pl.read_parquet(sm.input.data), hp, sm.output[0], metrics_path=p.metrics)
