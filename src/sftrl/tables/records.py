"""Job records: the ``benchmark:`` files Snakemake writes for every job that trains, evaluates or
decomposes (``benchmarks/<stage>/<job>.tsv``), as one table (``benchmarks/summary``, a report page)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import polars as pl

# Stages in pipeline order; a job's stage is its benchmark file's directory (benchmarks/<stage>/).
BENCHMARK_STAGES = ("base", "sft", "rl", "evaluate", "svd", "spectrum", "edits")
BENCHMARK_MARKDOWN = {
    "stage": ("raw", "stage"),
    "job": ("raw", "job"),
    "seed": ("raw", "seed"),
    "wall time (s)": ("raw1", "seconds"),
    "CPU time (s)": ("raw1", "cpu_seconds"),
    "peak memory (MB)": ("raw1", "max_rss_mb"),
}
BENCHMARK_FOOTNOTE = (
    "One row per job of the stages that train, evaluate or decompose, from Snakemake's "
    "`benchmark:` records (`benchmarks/<stage>/<job>.tsv`): wall time, CPU time and peak resident "
    "memory (RSS) of the job's processes. A job that ran again shows its last run. seed: the "
    "replicate whose job it is (seed-<n>/benchmarks/); – for a job every replicate shares."
)


def benchmark_table(paths: Iterable[str | os.PathLike] | Mapping[int | None, Iterable]) -> pl.DataFrame:
    """The benchmark records ``benchmarks/<stage>/<job>.tsv`` as one table: stage, job, seed, wall
    time (s), CPU time (s) and peak RSS (MB); rows by stage (pipeline order), then job (natural
    order), then seed. ``paths`` is a list of records (seed: none), or ``{seed: records}`` where
    None = the shared jobs'."""
    by_seed = paths if isinstance(paths, Mapping) else {None: paths}
    rows = []
    for seed, path in ((seed, Path(p)) for seed, group in by_seed.items() for p in group):
        record = pl.read_csv(path, separator="\t", null_values=["NA", "-", ""], infer_schema_length=0)
        last = record.row(-1, named=True)  # one row per run; `benchmark: repeat(...)` adds more

        def number(column, last=last):
            value = last.get(column)
            return None if value is None else float(value)

        rows.append(
            {
                "stage": path.parent.name,
                "job": path.stem,
                "seed": seed,
                "seconds": number("s"),
                "cpu_seconds": number("cpu_time"),
                "max_rss_mb": number("max_rss"),
            }
        )
    order = {stage: i for i, stage in enumerate(BENCHMARK_STAGES)}
    natural = lambda text: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]  # noqa: E731
    rows.sort(key=lambda r: (order.get(r["stage"], len(order)), r["stage"], natural(r["job"]), r["seed"] or -1))
    schema = {
        "stage": pl.String,
        "job": pl.String,
        "seed": pl.Int64,
        "seconds": pl.Float64,
        "cpu_seconds": pl.Float64,
        "max_rss_mb": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema)
