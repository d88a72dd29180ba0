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

Then the schedule, from Snakemake's own records of the jobs that made the study's files
(``.snakemake/metadata`` of the working directory above the results: each output's rule, inputs,
and the start and end of the job that made it): how long the study took from its first job's start
to its last job's end, how much job time that held, and the **critical path** -- the longest chain
of jobs each of which reads what the one before it made. No schedule, on any number of cores, can
finish these jobs faster than that chain (each job taking as long as it took in this run). The
chain follows input files only: a job that waited for a Snakemake checkpoint (the edits and
spectra that ``peak_ood`` decides) counts as if it had not, so the figure is a lower bound.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
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


def _seconds(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def snakemake_jobs(results: Path) -> tuple[list[dict], int]:
    """The jobs that made the files under ``results`` as Snakemake recorded them: one dict per
    job with its rule, outputs and inputs (paths as Snakemake wrote them, relative to its working
    directory), start and end, and a name (its shortest output's path under ``results``); and how
    many records of files under ``results`` were passed over (unreadable, of a job that did not
    finish, or without a start and end). Records of other files and of files that no longer exist
    are left out; ([], 0) when no working directory above ``results`` has Snakemake's metadata.
    ``results`` is not resolved: a results folder that is a link to elsewhere (scratch space on
    a cluster) is looked up from where it is linked, as Snakemake wrote it."""
    results = Path(os.path.abspath(results))
    workdir = next((p for p in (results, *results.parents) if (p / ".snakemake" / "metadata").is_dir()), None)
    if workdir is None:
        return [], 0
    meta = workdir / ".snakemake" / "metadata"
    scope = results.relative_to(workdir).as_posix() + "/"
    jobs: dict[tuple, dict] = {}
    passed_over = 0
    for record in meta.rglob("*"):
        if not record.is_file():
            continue
        # Snakemake names a record by the url-safe base64 of its file's path, cut into folders
        # ("@"-prefixed) where the name would be too long for the file system.
        parts = record.relative_to(meta).parts
        try:
            path = base64.urlsafe_b64decode("".join(p.removeprefix("@") for p in parts)).decode().rstrip("/")
        except (ValueError, UnicodeDecodeError):
            continue  # not a record
        if not path.startswith(scope) or not (workdir / path).exists():
            continue  # another study's file, or a file removed since
        try:
            info = json.loads(record.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            info = None
        info = info if isinstance(info, dict) else {}  # unreadable: passed over below, with no rule
        inputs, start, end = info.get("input") or [], info.get("starttime"), info.get("endtime")
        if (
            not isinstance(info.get("rule"), str)
            or info.get("incomplete")
            or not (_seconds(start) and _seconds(end) and start <= end)
            or not (isinstance(inputs, list) and all(isinstance(i, str) for i in inputs))
        ):
            passed_over += 1
            continue
        # One job's outputs share its rule, inputs and logs (and Snakemake's hash of the job,
        # which alone could repeat across runs)
        key = (info["rule"], info.get("job_hash"), tuple(sorted(inputs)), json.dumps(info.get("log")))
        job = jobs.setdefault(key, {"rule": info["rule"], "outputs": [], "inputs": set(), "start": start, "end": end})
        job["outputs"].append(path)
        job["inputs"].update(i.rstrip("/") for i in inputs)
        job["start"], job["end"] = min(job["start"], start), max(job["end"], end)
    for job in jobs.values():
        job["name"] = min(job["outputs"], key=len).removeprefix(scope)
    return sorted(jobs.values(), key=lambda j: (j["start"], j["rule"])), passed_over


def idle_gaps(jobs: list[dict], longer_than: float = 60.0) -> list[float]:
    """The stretches of more than ``longer_than`` seconds in which none of ``jobs`` ran: a sign
    that the records come from several runs (a partial rerun, another day)."""
    gaps, covered = [], None
    for job in sorted(jobs, key=lambda j: j["start"]):
        if covered is not None and job["start"] - covered > longer_than:
            gaps.append(job["start"] - covered)
        covered = job["end"] if covered is None else max(covered, job["end"])
    return gaps


def critical_path(jobs: list[dict]) -> list[dict]:
    """The longest chain of ``jobs`` (by each one's end - start) in which every job reads a file
    (or a file inside a folder) that the one before it made and started after it ended."""
    jobs = sorted(jobs, key=lambda j: j["start"])  # whatever a job waited for started before it
    made_by = {out: i for i, job in enumerate(jobs) for out in job["outputs"]}
    longest, before = [0.0] * len(jobs), [None] * len(jobs)
    for i, job in enumerate(jobs):
        waited = set()
        for path in job["inputs"]:
            for candidate in (path, *(str(p) for p in Path(path).parents)):
                if candidate in made_by:
                    waited.add(made_by[candidate])
                    break
        waited = [k for k in waited if k != i and jobs[k]["end"] <= job["start"] + 1e-3]
        best = max(waited, key=lambda k: longest[k], default=None)
        before[i] = best
        longest[i] = (job["end"] - job["start"]) + (longest[best] if best is not None else 0.0)
    i = max(range(len(jobs)), key=lambda k: longest[k], default=None)
    chain = []
    while i is not None:
        chain.append(jobs[i])
        i = before[i]
    return chain[::-1]


def print_schedule(results: Path, jobs_at_once: int) -> None:
    jobs, passed_over = snakemake_jobs(results)
    if not jobs:
        print(f"\nno Snakemake records of {results}'s jobs (.snakemake/metadata): no schedule")
        return
    span = max(j["end"] for j in jobs) - min(j["start"] for j in jobs)
    busy = sum(j["end"] - j["start"] for j in jobs)
    chain = critical_path(jobs)
    total = sum(j["end"] - j["start"] for j in chain)
    at_once = f"{busy / span:.2f}" if span > 0 else "–"
    slots = f"{jobs_at_once} job{'s' if jobs_at_once > 1 else ''}"
    print(f"\nschedule (Snakemake's records): {len(jobs)} jobs from the first start to the last end in {span:.0f} s, "
          f"{busy:.0f} s of job time ({at_once} jobs at once on average)")  # fmt: skip
    if gaps := idle_gaps(jobs):
        print(f"  (no job ran for {len(gaps)} stretch{'es' if len(gaps) > 1 else ''} of over a minute, the "
              f"longest {max(gaps):.0f} s: these records come from more than one run, so the span is not one "
              "run's time)")  # fmt: skip
    if passed_over:
        print(f"  ({passed_over} record{'s' if passed_over > 1 else ''} of this study's files passed over: unreadable, "
              "of a job that did not finish, or without a start and end; their jobs are missing below, so the "
              "figures may be too low)")  # fmt: skip
    print(f"critical path: {total:.0f} s in {len(chain)} jobs, each reading what the one before made "
          "(no schedule on any number of cores is shorter; checkpoints' waits not counted)")  # fmt: skip
    print(f"with {slots} at once: no schedule is shorter than {max(total, busy / jobs_at_once):.0f} s (the critical "
          f"path, or the job time / {jobs_at_once}: {busy / jobs_at_once:.0f} s), if each job takes as long as it "
          "took here\n")  # fmt: skip
    print("| job | rule | s | started at s |")
    print("|---|---|---|---|")
    first = min(j["start"] for j in jobs)
    for job in chain:
        print(f"| {job['name']} | {job['rule']} | {job['end'] - job['start']:.1f} | {job['start'] - first:.0f} |")


def count(text: str, least: int = 0, what: str = "a whole number") -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < least:
        raise argparse.ArgumentTypeError(f"expected {what}, at least {least}, not {text!r}")
    return int(text)


def jobs_at_once(text: str) -> int:
    return count(text, 1, "a whole number of jobs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="?", default="results/tiny", help="a study's results directory")
    ap.add_argument("--worst", type=count, default=3, help="how many of the jobs with the largest imports to list")
    ap.add_argument(
        "--jobs", type=jobs_at_once, default=2, help="jobs at once, for the schedule's bound (2: profiles/default)"
    )
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
    print_schedule(Path(args.results), args.jobs)


if __name__ == "__main__":
    main()
