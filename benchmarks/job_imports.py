"""Start-up and import time of every job of a finished study, beside the job's other work.

    python benchmarks/job_imports.py                 # results/tiny
    python benchmarks/job_imports.py results/rehearsal --worst 5

Every job's log ends with a line written by ``sftrl.logs.job_log``: the seconds from the process's
start to the job's code (the interpreter, Snakemake's script preamble and the script's imports)
plus the seconds spent loading modules while the job ran (timed at importlib's loader, as
``python -X importtime`` does), and the rest of the job's time. This prints, per kind of job (the
folder of its log), the number of jobs, the mean and largest import time and the mean other work,
and then the jobs with the largest import times.
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

LINE = re.compile(r"job: timing: imports ([\d.]+) s \(([\d.]+) s before the job's code, ([\d.]+) s inside it\), "
                  r"other work (-?[\d.]+) s")  # fmt: skip


def read(results: Path) -> list[tuple[str, str, float, float]]:
    """(kind, job, import seconds, other seconds) of every job log with a timing line."""
    rows = []
    for log in sorted((results / "logs").rglob("*.log")):
        found = LINE.findall(log.read_text(errors="replace"))
        if found:
            imports, _, _, other = map(float, found[-1])
            rows.append((log.parent.name, log.stem, imports, other))
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
    print("| jobs of | n | imports mean s | imports max s | other work mean s |")
    print("|---|---|---|---|---|")
    kinds = sorted({r[0] for r in rows}, key=lambda k: -max(r[2] for r in rows if r[0] == k))
    for kind in kinds:
        mine = [r for r in rows if r[0] == kind]
        imports, other = [r[2] for r in mine], [r[3] for r in mine]
        print(f"| {kind} | {len(mine)} | {statistics.mean(imports):.2f} | {max(imports):.2f} | "
              f"{statistics.mean(other):.2f} |")  # fmt: skip
    print("\nlargest import times: " + "; ".join(
        f"{kind}/{job} {imports:.2f} s" for kind, job, imports, _ in sorted(rows, key=lambda r: -r[2])[: args.worst]
    ))  # fmt: skip
    print(f"total: imports {sum(r[2] for r in rows):.0f} s, other work {sum(r[3] for r in rows):.0f} s")


if __name__ == "__main__":
    main()
