"""Where a finished study's time went: per stage, the jobs' wall time, imports and other work.

    python benchmarks/study_time.py                  # results/tiny
    python benchmarks/study_time.py results/rehearsal --worst 5

Two records of every job are read back:

* its log's last line, written by ``sftrl.logs.job_log``: the seconds from the process's start to
  the job's code (the interpreter, Snakemake's script preamble and the script's imports) plus the
  seconds spent loading modules while the job ran (timed at importlib's loader, as ``python -X
  importtime`` does), and the rest of the job's code (its work);
* Snakemake's ``benchmark:`` record (``benchmarks/<stage>/<job>.tsv``: the whole job's wall time),
  for the stages that have one (training, evaluation, SVDs, spectra, edits).

Prints one row per stage (the folder of the job's log) -- jobs, summed and largest wall time, mean
imports, largest imports, summed work -- then the jobs with the largest import times.
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

LINE = re.compile(r"job: timing: imports ([\d.]+) s \(([\d.]+) s before the job's code, ([\d.]+) s inside it\), "
                  r"other work (-?[\d.]+) s")  # fmt: skip


def read(results: Path) -> list[dict]:
    """One row per job log with a timing line: stage, job, imports, work and (where there is a
    benchmark record) wall seconds. The shared jobs' logs (``logs/``) and every replicate's
    (``seed-<n>/logs/``); a replicate's job is named ``<job>@seed-<n>``."""
    rows = []
    scopes = [results, *sorted(p for p in results.glob("seed-*") if p.is_dir())]
    for scope in scopes:
        rows += _read_scope(scope, "" if scope == results else f"@{scope.name}")
    return rows


def _read_scope(scope: Path, suffix: str) -> list[dict]:
    rows = []
    for log in sorted((scope / "logs").rglob("*.log")):
        found = LINE.findall(log.read_text(errors="replace"))
        if not found:
            continue
        imports, _, _, work = map(float, found[-1])
        stage = log.parent.name
        record = scope / "benchmarks" / stage / f"{log.stem}.tsv"  # logs/<stage>/ and benchmarks/<stage>/
        wall = None
        if record.is_file():
            lines = record.read_text().splitlines()
            wall = float(lines[-1].split("\t")[0]) if len(lines) > 1 else None
        rows.append({"stage": stage, "job": log.stem + suffix, "imports": imports, "work": work, "wall": wall})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="?", default="results/tiny", help="a study's results directory")
    ap.add_argument("--worst", type=int, default=3, help="how many of the slowest-starting jobs to list")
    args = ap.parse_args()
    rows = read(Path(args.results))
    if not rows:
        raise SystemExit(f"{args.results}: no job logs with a timing line (run the study first)")
    print(f"{len(rows)} jobs in {args.results}\n")
    print("| stage | jobs | wall s (sum) | wall s (max) | imports s (mean) | imports s (max) | work s (sum) |")
    print("|---|---|---|---|---|---|---|")
    stages = sorted(
        {r["stage"] for r in rows}, key=lambda k: -sum(r["imports"] + r["work"] for r in rows if r["stage"] == k)
    )
    for stage in stages:
        mine = [r for r in rows if r["stage"] == stage]
        walls = [r["wall"] for r in mine if r["wall"] is not None]
        wall_sum = f"{sum(walls):.0f}" if walls else "–"
        wall_max = f"{max(walls):.1f}" if walls else "–"
        imports = [r["imports"] for r in mine]
        print(f"| {stage} | {len(mine)} | {wall_sum} | {wall_max} | {statistics.mean(imports):.2f} | "
              f"{max(imports):.2f} | {sum(r['work'] for r in mine):.0f} |")  # fmt: skip
    worst = sorted(rows, key=lambda r: -r["imports"])[: args.worst]
    print("\nlargest import times: " + "; ".join(f"{r['stage']}/{r['job']} {r['imports']:.2f} s" for r in worst))
    print(f"all jobs: imports {sum(r['imports'] for r in rows):.0f} s, work {sum(r['work'] for r in rows):.0f} s "
          "(wall s: Snakemake's benchmark records, where a stage has them; '–' where it has none)")  # fmt: skip


if __name__ == "__main__":
    main()
