"""Rule evaluate: play the fixed hands of one split with one model (see sftrl.evaluate)."""

import json

import polars as pl

from sftrl.atomic import write_parquet, write_text
from sftrl.evaluate import GenerationSettings, evaluate_model
from sftrl.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
e = sm.params.eval
with job_log(sm.log[0], sm.threads):
    settings = GenerationSettings(
        max_new_tokens=e["max_new_tokens"], batch_size=e["batch_size"], decoding=e["decoding"], seed=e["seed"]
    )
    records, summary = evaluate_model(
        sm.input.model,
        pl.read_parquet(sm.input.hands),
        sm.params.template,
        e["turns"],
        settings,
        arithmetic=e["arithmetic"],
        dtype=sm.params.dtype,
    )
    summary = {"model": sm.wildcards.model, "split": sm.wildcards.split, **summary}
    write_parquet(records, sm.output.records)
    write_text(json.dumps(summary, indent=2) + "\n", sm.output.summary)
    print(json.dumps(summary, indent=2))
