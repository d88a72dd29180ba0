"""benchmarks/study_time.py's schedule: Snakemake's records of a study's jobs read back, and the
critical path (the longest chain of jobs each reading what the one before made) through them."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import study_time  # noqa: E402

sys.path.remove(str(ROOT / "benchmarks"))


# the last line of a job's log (sftrl.logs.job_log), which the stage table reads
TIMING = "job: timing: imports 1.00 s (0.50 s before the job's code, 0.50 s inside it), other work 2.00 s\n"


def study_time_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "study_time.py"), *args],
                          capture_output=True, text=True, cwd=cwd)  # fmt: skip


def job(name: str, start: float, end: float, inputs=(), outputs=None) -> dict:
    return {"rule": name, "name": name, "start": start, "end": end, "inputs": set(inputs), "outputs": outputs or [name]}


def test_the_critical_path_is_the_longest_chain_of_reads():
    # data -> base -> {short, long} -> table: the chain through the long branch, 1 + 10 + 7 + 1
    jobs = [
        job("data", 0, 1),
        job("base", 1, 11, ["data"], ["models/base"]),
        job("short", 11, 13, ["models/base/model.safetensors"]),  # a file inside the base's folder
        job("long", 11, 18, ["models/base"]),
        job("table", 18, 19, ["short", "long"]),
        job("late", 19, 20, ["data"]),  # reads the data only: its own chain is 2 s
    ]
    chain = study_time.critical_path(jobs[::-1])  # in any order
    assert [j["name"] for j in chain] == ["data", "base", "long", "table"]
    # a record of a file made after its reader started (remade by a later run) is no dependency
    remade, reader = job("long", 30, 37, ["models/base"]), job("table", 18, 28, ["long"])
    assert [j["name"] for j in study_time.critical_path([remade, reader])] == ["table"]
    assert study_time.critical_path([]) == []


def write_record(meta: Path, path: str, record: dict, max_len: int = 255) -> None:
    """A metadata record where Snakemake puts it (snakemake.persistence.file: the url-safe base64
    of the path, cut into "@"-prefixed folders of max_len - 1 characters)."""
    b64 = base64.urlsafe_b64encode(path.encode()).decode()
    parts = [b64[i : i + max_len - 1] for i in range(0, len(b64), max_len - 1)]
    target = meta.joinpath(*("@" + p for p in parts[:-1]), parts[-1])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(record))


def test_records_are_read_back_by_job_through_a_linked_results_folder(tmp_path):
    """The study's results folder is a link to scratch space, as on a cluster: its records are
    read from the working directory where the link is, not from beside the link's target."""
    (tmp_path / "scratch" / "s").mkdir(parents=True)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "s").symlink_to(tmp_path / "scratch" / "s")
    meta = tmp_path / ".snakemake" / "metadata"
    long_dir = "results/s/eval/" + "/".join(["x" * 50] * 4)  # a record name split into folders
    data = ["results/s/data"]
    for path, rule, job_hash, inputs, start, end in [
        ("results/s/a.json", "one", 1, data, 10.0, 12.0),
        ("results/s/b.json", "one", 1, data, 10.5, 12.5),  # the same job's second output
        (f"{long_dir}/id.json", "two", 2, data, 13.0, 15.0),
        # two jobs of one rule without Snakemake's job hash, one of them a folder written with a slash
        ("results/s/m/", "six", None, ["results/s/a.json/"], 200.0, 201.0),
        ("results/s/n", "six", None, data, 202.0, 203.0),
        ("results/s/gone.json", "three", 3, data, 1.0, 2.0),  # removed since: left out
        ("results/other/c.json", "four", 4, data, 1.0, 2.0),  # another study: left out
    ]:
        write_record(meta, path, {"rule": rule, "job_hash": job_hash, "input": inputs, "starttime": start,
                                  "endtime": end}, max_len=100)  # fmt: skip
        if "gone" not in path:
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).touch()
    (meta / "not-base64!").write_text("{}")  # not a record at all: nothing to count
    # records of this study's files that cannot be used, each counted: not a job's record, a job
    # that was interrupted (Snakemake marks its outputs incomplete), a start that is not a number,
    # an empty file
    bad = {"list": [1, 2], "half": {"rule": "five", "input": [], "starttime": 3.0, "endtime": None, "incomplete": True},
           "text": {"rule": "five", "input": [], "starttime": "3", "endtime": 4.0}}  # fmt: skip
    for name, record in bad.items():
        write_record(meta, f"results/s/{name}", record)
        (tmp_path / "results" / "s" / name).touch()
    write_record(meta, "results/s/empty", {})
    next(meta.glob(base64.urlsafe_b64encode(b"results/s/empty").decode())).write_text("")
    (tmp_path / "results" / "s" / "empty").touch()

    jobs, passed_over = study_time.snakemake_jobs(tmp_path / "results" / "s")
    assert [(j["rule"], j["name"], j["start"], j["end"]) for j in jobs] == [
        ("one", "a.json", 10.0, 12.5),
        ("two", long_dir.removeprefix("results/s/") + "/id.json", 13.0, 15.0),
        ("six", "m", 200.0, 201.0),
        ("six", "n", 202.0, 203.0),
    ]
    assert passed_over == 4
    assert [j["name"] for j in study_time.critical_path(jobs)] == ["a.json", "m"]  # m read a.json
    assert study_time.idle_gaps(jobs) == [185.0]  # 15 s to 200 s: records of two runs
    assert study_time.snakemake_jobs(tmp_path / "results" / "nowhere") == ([], 0)
    assert study_time.snakemake_jobs(Path("/")) == ([], 0)

    (tmp_path / "results" / "s" / "logs" / "x").mkdir(parents=True)
    (tmp_path / "results" / "s" / "logs" / "x" / "j.log").write_text(TIMING)
    proc = study_time_cli("results/s", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "4 jobs from the first start to the last end in 193 s, 6 s of job time" in proc.stdout
    assert "no job ran for 1 stretch of over a minute, the longest 185 s" in proc.stdout
    assert "4 records of this study's files passed over" in proc.stdout


def test_the_reduced_study_schedule(reduced_study):
    results = reduced_study / "results" / "test"
    proc = study_time_cli(str(results))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    jobs, passed_over = study_time.snakemake_jobs(results)
    assert passed_over == 0
    n, span, busy = re.search(
        r"schedule \(Snakemake's records\): (\d+) jobs .* in (\d+) s, (\d+) s of job time", out
    ).groups()
    assert int(n) == len(jobs) == len(list(results.rglob("logs/**/*.log"))) > 40  # one record per job, as logs
    total, length = map(int, re.search(r"critical path: (\d+) s in (\d+) jobs", out).groups())
    rows = re.findall(r"^\| (\S+) \| (\w+) \| ([\d.]+) \| (\d+) \|$", out, re.M)
    assert len(rows) == length and abs(sum(float(r[2]) for r in rows) - total) <= 1
    assert total <= int(span) + 1 and int(busy) >= total - 1
    bound = int(re.search(r"with 2 jobs at once: no schedule is shorter than (\d+) s", out).group(1))
    assert abs(bound - max(total, int(busy) / 2)) <= 1
    # the chain starts with the data and the base and every job in it reads what the one before made
    assert rows[0][1].startswith("data_") and rows[1][1] == "base"
    by_name = {j["name"]: j for j in jobs}
    for before, after in zip(rows, rows[1:], strict=False):
        made, read = by_name[before[0]]["outputs"], by_name[after[0]]["inputs"]
        assert any(r == m or r.startswith(m + "/") for r in read for m in made), (before[0], after[0])
    # ... and nothing else is longer: the base and every SFT segment after it are one chain
    sft = sorted((j for j in jobs if j["rule"] == "sft"), key=lambda j: j["start"])
    along = [j for j in jobs if j["rule"] in ("data_pretrain", "base")] + sft
    assert total >= sum(j["end"] - j["start"] for j in along) - 1


@pytest.mark.parametrize("args", [["--jobs", "2"], []])
def test_no_records_no_schedule(tmp_path, args):
    (tmp_path / "logs" / "x").mkdir(parents=True)
    (tmp_path / "logs" / "x" / "j.log").write_text(TIMING)
    proc = study_time_cli(str(tmp_path), *args)
    assert proc.returncode == 0, proc.stderr
    assert "no Snakemake records" in proc.stdout and "| x | 1 |" in proc.stdout


def test_a_bad_job_count_is_one_line():
    proc = study_time_cli("--jobs", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "argument --jobs: expected a whole number of jobs, at least 1, not '0'" in proc.stderr
