"""The SLURM profile (profiles/slurm): the jobs a paper config plans and what each asks for
(dry-runs, no SLURM needed), the command as cluster users type it (`snakemake --profile slurm`,
after `sftrl profile install`), and a reduced study run by a real SLURM controller started here."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, paper_config, reduced_config, run_snakemake, write_config
from test_envs import rule_blocks

PROFILE = ROOT / "profiles" / "slurm"
HELPERS = ROOT / "tests" / "slurm"
PAPER_CONFIGS = sorted((ROOT / "config").glob("paper-*.yaml"))
# Resource groups that hold a GPU in the paper configs; data and tables never do.
GPU_GROUPS = {"base", "sft", "rl", "evaluate", "svd", "spectrum", "edit"}
CPU_GROUPS = {"data", "tables"}


def rule_groups() -> dict[str, str]:
    """rule -> its resource group (`**res("<group>")` in the rule)."""
    groups = {}
    for rule, (_, body) in rule_blocks().items():
        m = re.search(r'\*\*res\("(\w+)"\)', body)
        if m:
            groups[rule] = m.group(1)
    return groups


def action_less_rules() -> set[str]:
    return {
        rule
        for rule, (_, body) in rule_blocks().items()
        if not re.search(r"(?m)^    (script|shell|run|notebook|wrapper):", body)
    }


def expected_resources(cfg: dict, group: str) -> dict:
    """What res(group) (sftrl.launch.job_resources) gives for the merged config ``cfg``: a job with
    several GPUs also asks for one node."""
    merged = {**cfg["resources"]["default"], **cfg["resources"].get(group, {})}
    if merged.get("gpu") and "cpus_per_gpu" in merged:
        merged.pop("cpus_per_task", None)
    elif not merged.get("gpu"):
        merged.pop("cpus_per_gpu", None)
    if merged.get("gpu", 0) > 1:
        merged.setdefault("nodes", 1)
    return merged


def merged_config(path: Path) -> dict:
    """config.yaml updated by ``path`` as `--configfile path` does (Snakemake's update_config),
    with the study file's resource groups whole, as the workflow makes them."""
    from snakemake.utils import update_config

    from sftrl.config import replace_resource_groups

    with open(ROOT / "config.yaml") as fh:
        base = yaml.safe_load(fh)
    with open(path) as fh:
        own = yaml.safe_load(fh)
    update_config(base, own)
    return replace_resource_groups(base, own)


def planned_jobs(out: str) -> list[tuple[str, dict]]:
    """(rule, resources) of every job a dry-run prints."""
    jobs = []
    for m in re.finditer(r"(?m)^(?:local)?(?:rule|checkpoint) (\w+):\n((?:    .*\n)*)", out):
        res = re.search(r"(?m)^    resources: (.*)$", m.group(2))
        items = dict(kv.split("=", 1) for kv in res.group(1).split(", ")) if res else {}
        jobs.append((m.group(1), items))
    return jobs


def job_stats(out: str) -> dict[str, int]:
    """The dry-run's "Job stats" table: rule -> number of jobs."""
    table = out[out.index("Job stats:") :]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"(?m)^(\w+)\s+(\d+)$", table)}


# --- dry-runs of the paper configs through the profile -------------------------------------


def test_profile_uses_the_slurm_executor_without_accounting():
    profile = yaml.safe_load((PROFILE / "profile.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["slurm-status-command"] == "squeue"  # works without an accounting database
    assert profile["rerun-incomplete"] is True and profile["retries"] >= 1
    assert profile["slurm-requeue"] is True
    assert "default-resources" not in profile  # resources come from the study's config


def test_aggregate_targets_are_local_rules():
    """Only rules without an action run in the Snakemake process; they are named in localrules."""
    local = action_less_rules()
    assert local and all(r in ("all", "rl_sweep") or r.startswith("all_") for r in local), sorted(local)
    text = (ROOT / "Snakefile").read_text()
    listed = set(re.findall(r"\w+", re.search(r"(?m)^localrules:\n((?:    \w+,\n)+)", text).group(1)))
    assert listed == local, f"localrules in the Snakefile: {sorted(listed)}; aggregate rules: {sorted(local)}"


@pytest.mark.parametrize("paper", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_paper_dry_run_plans_gpus_for_model_rules_only(paper, tmp_path):
    cfg = merged_config(paper)
    study = cfg["study"]
    last = max(cfg["sft"]["checkpoints"])
    first = min(cfg["sft"]["checkpoints"])
    # `all` stops at the peak_ood checkpoint; name one SVD, comparison and edit explicitly.
    extra = [
        f"results/{study}/seed-0/svd/sft-{first}.safetensors",
        f"results/{study}/seed-0/spectrum/base--sft-{first}.parquet",
        f"results/{study}/seed-0/eval/uvmerge-sft-{first}-into-sft-{last}-top0.2/id.json",
    ]
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    start = time.perf_counter()
    configfile = paper_config(paper, tmp_path)  # model.path: a fake checkpoint of the paper model
    proc = run_snakemake(tmp_path, "-n", "--profile", str(PROFILE), "all", *extra, configfile=configfile)
    seconds = time.perf_counter() - start
    out = proc.stdout + proc.stderr
    jobs = planned_jobs(out)
    stats = job_stats(out)
    print(f"{paper.name}: dry-run of {stats['total']} jobs in {seconds:.1f} s")
    assert len(jobs) == stats["total"], (len(jobs), stats)
    groups = rule_groups()
    seen = set()
    for rule, res in jobs:
        if rule in action_less_rules():
            continue
        group = groups[rule]
        seen.add(group)
        want = expected_resources(cfg, group)
        got = {
            k: int(res[k]) for k in ("gpu", "cpus_per_gpu", "cpus_per_task", "nodes", "mem_mb", "runtime") if k in res
        }
        assert got == want, f"{paper.name}: rule {rule} (group {group}) plans {got}, config says {want}"
        if group in GPU_GROUPS:
            assert got.get("gpu", 0) >= 1 and "cpus_per_task" not in got, (rule, got)
        else:
            assert "gpu" not in got and "cpus_per_gpu" not in got, (rule, got)
    assert GPU_GROUPS | CPU_GROUPS <= seen, f"groups never planned: {GPU_GROUPS | CPU_GROUPS - seen}"
    assert stats["sft"] == len(cfg["sft"]["checkpoints"]) and stats["rl"] == len(cfg["rl"]["from"])
    sft = dict(jobs)["sft"]
    assert int(sft["gpu"]) == 4 and int(sft["cpus_per_gpu"]) == 8 and int(sft["nodes"]) == 1, sft


# --- the command as users type it: `snakemake --profile slurm` ------------------------------

# config.json of Qwen2.5-7B-Instruct: what a stand-in checkpoint at model.path needs to say.
QWEN_7B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584,
    "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
    "num_key_value_heads": 4, "max_position_embeddings": 32768, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "vocab_size": 152064, "tie_word_embeddings": False,
    "hidden_act": "silu", "bos_token_id": 151643, "eos_token_id": 151645, "torch_dtype": "bfloat16",
}  # fmt: skip


def stand_in_checkpoint(path: Path, config: dict) -> Path:
    """A checkpoint directory with the model's real config.json and a small weight file: enough
    for the checks a dry-run makes of model.path, without the weights."""
    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    save_file({"lm_head.weight": torch.zeros(2, 2)}, str(path / "model.safetensors"))
    return path


def installed_profile(tmp_path: Path) -> dict:
    """`sftrl profile install` into a temporary configuration directory; the environment under
    which `snakemake --profile slurm` finds it."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    cmd = [sys.executable, "-c", "import sys; from sftrl.cli import main; sys.exit(main(['profile', 'install']))"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "xdg" / "snakemake" / "slurm" / "profile.yaml").is_file()
    return env


def test_the_cluster_command_as_users_type_it(tmp_path):
    """`snakemake --profile slurm -n --configfile config/paper-qwen2.5-7b.yaml` in the repository
    (so the workflow profile is read too), after the documented set-up; the paper config's copy
    differs only in model.path (a stand-in checkpoint) and the cluster keys users add."""
    env = installed_profile(tmp_path)
    paper = ROOT / "config" / "paper-qwen2.5-7b.yaml"
    cfg = yaml.safe_load(paper.read_text())
    cfg["model"]["path"] = str(stand_in_checkpoint(tmp_path / "Qwen2.5-7B-Instruct", QWEN_7B))
    cfg["resources"]["sft"].update(runtime="4h", qos="long", gpu_model="h100", slurm_extra="--mail-type=END")
    (tmp_path / "config").mkdir()
    configfile = tmp_path / "config" / paper.name
    configfile.write_text(yaml.safe_dump(cfg, sort_keys=False))
    command = ["snakemake", "--profile", "slurm", "-n", "--configfile", str(configfile)]
    proc = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, env=env, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(command)}:\n{out[-4000:]}"
    assert "Using profiles slurm and workflow specific profile profiles/default" in out
    jobs = planned_jobs(out)
    assert len(jobs) == job_stats(out)["total"] > 50
    sft = [res for rule, res in jobs if rule == "sft"]
    assert len(sft) == len(cfg["sft"]["checkpoints"])
    for res in sft:
        want = {"gpu": "4", "gpu_model": "h100", "nodes": "1", "runtime": "240", "qos": "long"}
        want["slurm_extra"] = "--mail-type=END"
        assert {k: res.get(k) for k in want} == want, res
    evaluate = next(res for rule, res in jobs if rule == "evaluate")
    assert evaluate["gpu"] == "1" and "nodes" not in evaluate  # one GPU: no node count needed


# --- a reduced study on a real SLURM controller --------------------------------------------


def _unavailable(reason: str):
    if os.environ.get("SFTRL_REQUIRE_SLURM") == "1":
        pytest.fail(f"SLURM test cluster required (SFTRL_REQUIRE_SLURM=1) but: {reason}")
    pytest.skip(reason)


@pytest.fixture
def slurm_cluster(monkeypatch):
    """A one-node SLURM cluster with two fake GPUs (tests/slurm/start.sh), stopped afterwards
    (tests/slurm/stop.sh, by the daemons' pid files) whatever the test's outcome."""
    if os.geteuid() != 0:
        _unavailable("starting slurmd/slurmctld/munged needs root")
    # /tmp, not pytest's tmp_path: munged wants every directory above its socket searchable.
    cluster = Path(tempfile.mkdtemp(prefix="sftrl-slurm-", dir="/tmp"))
    try:
        start = subprocess.run(
            ["bash", str(HELPERS / "start.sh"), str(cluster)], capture_output=True, text=True, timeout=900
        )
        if start.returncode != 0:
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((cluster / "log").glob("*.log")))
            _unavailable(f"tests/slurm/start.sh failed ({start.returncode}): {start.stderr.strip()}\n{logs}")
        monkeypatch.setenv("SLURM_CONF", str(cluster / "slurm.conf"))
        monkeypatch.setenv("PATH", f"{cluster / 'bin'}:{os.environ['PATH']}")
        yield cluster
    finally:
        subprocess.run(["bash", str(HELPERS / "stop.sh"), str(cluster)], timeout=120)
        for name in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            pid = (cluster / name).read_text().strip() if (cluster / name).is_file() else None
            assert not pid or not Path(f"/proc/{pid}").exists(), f"{name} ({pid}) still running"
        shutil.rmtree(cluster, ignore_errors=True)


def scontrol_job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-d", job_id], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"([\w/]+)=(\S*)", out))


@pytest.mark.slurm
@pytest.mark.slow
def test_reduced_study_runs_as_slurm_jobs_with_gpus(slurm_cluster, tmp_path, monkeypatch):
    cfg = reduced_config()
    cfg["sft"].update(checkpoints=[4], max_steps=4, per_device_batch_size=16)
    # GPU groups ask for the node's (fake) GPUs, as a paper config asks for real ones (their
    # cpus_per_task from config.yaml gives way to cpus_per_gpu: rules/common.smk, res()); the SFT
    # segment takes both, as two processes (torchrun on the CPU), and asks for one node.
    for group in GPU_GROUPS:
        cfg["resources"][group] = {**cfg["resources"].get(group, {}), "gpu": 1, "cpus_per_gpu": 1}
    cfg["resources"]["sft"]["gpu"] = 2
    cfg["distributed"]["launcher"] = "torchrun"
    write_config(tmp_path, cfg)
    # Model rules (base, sft, evaluate) with GPUs, data and table rules without, one local target.
    targets = ["all_data", "results/test/tables/sft-trajectory.md"]
    planned = job_stats(run_snakemake(tmp_path, "-n", *targets).stdout)
    # as users type it: the installed profile by name, beside the workflow profile
    monkeypatch.setenv("XDG_CONFIG_HOME", installed_profile(tmp_path)["XDG_CONFIG_HOME"])
    args = ["--profile", "slurm", "--workflow-profile", str(ROOT / "profiles" / "default"), "--verbose",
            "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2",
            *targets]  # fmt: skip
    proc = run_snakemake(tmp_path, *args, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake --profile slurm failed:\n{out[-6000:]}"
    assert "Using profiles slurm and workflow specific profile" in out

    submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: [^)]*/rule_(\w+?)/", out)
    local = {"all_data"}
    assert set(planned) - {"total"} - local == {rule for _, rule in submitted}, (planned, submitted)
    groups = rule_groups()
    for job_id, rule in submitted:
        info = scontrol_job(job_id)
        assert info["JobState"] == "COMPLETED", (rule, info)
        assert info["Comment"].startswith(f"rule_{rule}"), (rule, info["Comment"])
        want = expected_resources(cfg, groups[rule])
        gres = info.get("JOB_GRES", "(null)")
        if groups[rule] in GPU_GROUPS:
            gpus = want["gpu"]
            assert gres == f"gpu:{gpus}", f"{rule} (SLURM job {job_id}) got GRES {gres}, expected gpu:{gpus}"
            assert info.get("CpusPerTres") == "gres:gpu:1", (rule, info.get("CpusPerTres"))
            assert info["NumNodes"] == "1", (rule, info["NumNodes"])
        else:
            assert gres == "(null)", f"{rule} (SLURM job {job_id}) got GRES {gres}"
            assert "CpusPerTres" not in info and info["CPUs/Task"] == str(want["cpus_per_task"]), (rule, info)
        assert f"mem={want['mem_mb']}M" in info["TRES"], (rule, info["TRES"])
        hours, minutes = divmod(want["runtime"], 60)
        assert info["TimeLimit"] == f"{hours:02d}:{minutes:02d}:00", (rule, info["TimeLimit"])
    completed = {}
    for _, rule in submitted:
        completed[rule] = completed.get(rule, 0) + 1
    assert all(completed[r] >= n for r, n in planned.items() if r not in local and r != "total")

    # What was submitted (the plugin's sbatch calls, --verbose): the 2-GPU SFT job asks for one
    # node, no job for a node count otherwise; every job's Snakemake gets --cores all (nothing
    # caps its threads; profiles/default sets jobs, not cores).
    calls = re.findall(r"sbatch call: (.*)", out)
    assert len(calls) == len(submitted), (len(calls), len(submitted))
    for call in calls:
        rule = re.search(r"--comment '?rule_(\w+?)(?:_wildcards|'| )", call).group(1)
        assert ("--nodes=1" in call) == (rule == "sft"), (rule, call)
        assert re.findall(r"--cores '?(\w+)", call) == ["all"], call
        if rule == "sft":
            assert "--gpus=2" in call, call

    # Each job's own log: it ran inside its SLURM job and saw the GPUs it was given.
    ids = {job_id for job_id, _ in submitted}
    logs = sorted((tmp_path / "results" / "test").rglob("logs/**/*.log"))
    assert len(logs) == planned["total"] - len(local), [p.name for p in logs]
    for log in logs:
        first = log.read_text().splitlines()[0]
        env = dict(kv.split("=", 1) for kv in first.removeprefix("job: ").split())
        assert env["SLURM_JOB_ID"] in ids, (log, first)
        rule = next(r for j, r in submitted if j == env["SLURM_JOB_ID"])
        if groups[rule] in GPU_GROUPS:  # its GPUs: both for sft, either one for the others
            want = {"0,1"} if rule == "sft" else {"0", "1"}
            assert env["CUDA_VISIBLE_DEVICES"] in want, (log, first)
        else:
            assert env["CUDA_VISIBLE_DEVICES"] == "-", (log, first)
    assert "localrule all_data:" in out  # the aggregate target ran in Snakemake's own process
    sft_log = (tmp_path / "results" / "test" / "seed-0" / "logs" / "sft" / "sft-4.log").read_text()
    assert "launching:" in sft_log and "--nproc_per_node 2" in sft_log  # one process per GPU
    table = (tmp_path / "results" / "test" / "tables" / "sft-trajectory.md").read_text()
    assert "| sft-4 | 4 |" in table
