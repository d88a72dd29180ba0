"""Rule evaluate: play the fixed ID and OOD hands with one model (see sftrl.evaluate).

eval.batch_size (run-only: memory, not results) comes from the config, not from params."""

import json

import polars as pl

from sftrl.atomic import write_parquet, write_text
from sftrl.evaluate import GenerationSettings, evaluate_model
from sftrl.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
e = sm.params.eval
with job_log(sm.log[0], sm.threads):
    settings = GenerationSettings(
        max_new_tokens=e["max_new_tokens"],
        batch_size=sm.config["eval"]["batch_size"],
        decoding=e["decoding"],
        seed=e["seed"],
    )
    hands = {split: pl.read_parquet(path) for split, path in zip(sm.params.splits, sm.input.hands, strict=True)}
    results = evaluate_model(
        sm.input.model, hands, sm.params.template, e["turns"], settings, e["arithmetic"], sm.params.dtype
    )
    for (split, (records, summary)), records_path, summary_path in zip(
        results.items(), sm.output.records, sm.output.summaries, strict=True
    ):
        summary = {"model": sm.wildcards.model, "split": split, **summary}
        write_parquet(records, records_path)
        write_text(json.dumps(summary, indent=2) + "\n", summary_path)
        print(json.dumps(summary, indent=2))
