"""Shared fixtures: the repository root and a reduced study config for fast real runs."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

# One intra-op thread: several torch processes on a small machine (a test and the jobs of a
# workflow it runs) otherwise spin against each other and run many times slower.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]

# The README's `pytest` runs two pytest-xdist workers, each taking whole files (pyproject.toml:
# `-n 2 --dist loadfile --no-loadscope-reorder`). The files whose fixtures run a study go out
# first, in this order, so the two workers start on the long runs side by side (one builds the
# shared reduced study, then its second seed; the other runs the rehearsal, then the SLURM
# study) and the short tests fill in behind them, instead of one long run being left alone at
# the end.
FIRST = ("test_envs.py", "test_rehearsal.py", "test_rebuild.py", "test_slurm.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: each file keeps its order


def default_config() -> dict:
    with open(ROOT / "config.yaml") as fh:
        return yaml.safe_load(fh)


def reduced_config(study: str = "test") -> dict:
    """The default study shrunk to seconds: same stages, tiny sizes."""
    cfg = copy.deepcopy(default_config())
    cfg["study"] = study
    cfg["model"]["tiny"].update(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2)
    cfg["data"].update(sft_size=640, rl_size=64, eval_size=24, pretrain_size=640)
    cfg["base"].update(steps=20, batch_size=32, warmup_steps=2)
    cfg["sft"].update(checkpoints=[4, 8], max_steps=12, batch_size=32, per_device_batch_size=32)
    cfg["eval"].update(batch_size=64)
    cfg["rl_sweep"].update(**{"from": []})
    cfg["rl"].update(
        **{"from": None},
        num_updates=2,
        episodes_per_update=8,
        minibatch_size=8,
        micro_batch_size=8,
        rollout_batch_size=8,
        save_every=1,
    )
    cfg["edits"].update(
        uv_merge=[[0.2, 0.0], [1.0, 0.0]], sigma_swap=[[0.2, 0.0]], triplet_swap=[], layer_reset=[[0, 0.5], [0, 1.0]]
    )
    cfg["threads"] = 1
    return cfg


def save_tiny_llama(path: Path, seed, vocab_size=40, max_shard_size=None) -> Path:
    """A random 4-layer LlamaForCausalLM (tied embeddings, no tokenizer) saved to ``path``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=vocab_size,
        tie_word_embeddings=True,
    )
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    LlamaForCausalLM(config).save_pretrained(path, **kwargs)
    return path


# The config.json of the paper models (their shapes; no weights are needed for a dry-run).
PAPER_MODEL_CONFIGS = {
    "paper-qwen2.5-7b": {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "max_position_embeddings": 32768,
    },
    "paper-llama-3.2-11b": {
        "model_type": "mllama",
        "architectures": ["MllamaForConditionalGeneration"],
        "text_config": {
            "model_type": "mllama_text_model",
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 40,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "vocab_size": 128256,
            "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38],
        },
    },
}


def fake_checkpoint(path: Path, config: dict) -> Path:
    """A checkpoint directory as the DAG-time check of model.path sees it: ``config`` as
    config.json and one small safetensors file (not the model's weights)."""
    import json

    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    save_file({"placeholder": torch.zeros(1)}, str(path / "model.safetensors"))
    return path


def paper_config(paper: Path, tmp_path: Path) -> Path:
    """A copy of the paper config ``paper`` whose model.path is a fake checkpoint of its model
    (the real weights are not on this machine); everything else as the file says."""
    cfg = yaml.safe_load(paper.read_text())
    cfg["model"]["path"] = str(fake_checkpoint(tmp_path / "weights" / paper.stem, PAPER_MODEL_CONFIGS[paper.stem]))
    out = tmp_path / paper.name
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def run_snakemake(
    workdir: Path, *args: str, check: bool = True, configfile: Path | None = None
) -> subprocess.CompletedProcess:
    """Run the repository's Snakefile in ``workdir`` (with its own config.yaml unless given)."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(configfile or workdir / "config.yaml"),
        "--workflow-profile",
        "none",
        *args,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_config(workdir: Path, cfg: dict) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _built_once(tmp_path_factory, worker_id: str, name: str, build) -> Path:
    """``build(path)`` run once per test session, even across pytest-xdist's workers (the README's
    test command runs two): the first worker to ask builds under the run's shared temporary
    directory while holding a lock; the others wait for it and get the same path. ``build``
    raising fails every test that asked, in each worker, without a second attempt."""
    from filelock import FileLock

    # the run's temporary directory: each xdist worker's basetemp lies below it (pytest -n 0: it is
    # the basetemp itself)
    root = tmp_path_factory.getbasetemp()
    root = root if worker_id == "master" else root.parent
    path, done, failed = root / name, root / f"{name}.done", root / f"{name}.failed"
    with FileLock(str(root / f"{name}.lock")):
        if failed.exists():
            raise AssertionError(f"{name} failed in another worker:\n{failed.read_text()}")
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)  # a worker that died while building left it half made
            path.mkdir()
            try:
                build(path)
            except BaseException as exc:
                failed.write_text(str(exc)[-20000:])
                raise
            done.touch()
    return path


@pytest.fixture(scope="session")
def reduced_study(tmp_path_factory, worker_id) -> Path:
    """A completed run of the reduced study (every stage), shared by the tests that only read it
    or dry-run against it (a test that changes it works on a copy). Returns the working directory
    (results under results/test/)."""

    def build(workdir: Path) -> None:
        write_config(workdir, reduced_config())
        run_snakemake(workdir, "--cores", "2")

    return _built_once(tmp_path_factory, worker_id, "reduced-study", build)


# A job in Snakemake's output: its rule and the indented lines under it (wildcards among them).
JOB = re.compile(r"^(?:local)?rule (\w+):\n(?P<body>(?:    .*\n)*)", re.M)


@pytest.fixture(scope="session")
def two_seeds(reduced_study, tmp_path_factory, worker_id) -> Path:
    """The reduced study with a second seed added and run: only seed 1's jobs and the tables
    across seeds ran (checked here, from the run's own job list). Shared by the seed tests of
    test_rebuild and the end-to-end test of test_workflow (another seed trains other models)."""

    def build(root: Path) -> None:
        work = root / "study"
        shutil.copytree(reduced_study, work, symlinks=True)  # results and .snakemake with their dates
        cfg = reduced_config()
        cfg["seeds"] = [0, 1]
        write_config(work, cfg)
        proc = run_snakemake(work, "--cores", "2")
        out = proc.stdout + proc.stderr
        ran = [(m.group(1), m.group("body")) for m in JOB.finditer(out)]
        assert ran and not [r for r, body in ran if "seed=0" in body], [r for r, _ in ran]

    return _built_once(tmp_path_factory, worker_id, "two-seeds", build) / "study"
