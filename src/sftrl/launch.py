"""Multi-GPU training jobs: one process per GPU, started by ``accelerate launch``.

A rule's script describes its work as a *job spec* (a JSON-able dict of paths and settings) and
hands it to :func:`run`. With one GPU (or none) the work runs in the script's own process. With
``n > 1`` GPUs (the job's ``resources.<group>.gpu``), the spec is written next to the job's work
directory and the script starts ``n`` copies of ``python -m sftrl.launch <kind> <spec.json>``::

    accelerate launch --multi_gpu --num_processes n --num_machines 1 --main_process_port P \\
        [--use_deepspeed --deepspeed_config_file ds.json] -m sftrl.launch sft spec.json

Each copy runs the same function (:data:`JOBS`); the trainers (TRL's ``SFTTrainer`` and
:func:`sftrl.ppo.train_ppo`, both on accelerate) split the batch over the processes and only the
main process writes outputs. The script waits for the launcher and fails with it.

``distributed.launcher: torchrun`` starts the processes with ``torchrun`` instead (no accelerate
config, no DeepSpeed): that is how the tests run two real processes on a CPU with gloo, since
``accelerate launch --cpu`` starts a single process.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

LAUNCHERS = ("accelerate", "torchrun")


class LaunchError(RuntimeError):
    """A distributed job that could not be started or whose processes failed."""


def gpu_count(resources) -> int:
    """GPUs a job's resources ask for: ``gpu``, else a GPU ``gres`` (``gpu:4``, ``gpu:a100:4``),
    else one when only ``gpu_model`` is given (the SLURM plugin's default); 0 without GPUs."""
    if resources.get("gpu"):
        return int(resources.get("gpu"))
    m = re.fullmatch(r"gpu(?::[\w.]+)?:(\d+)[TGM]?", str(resources.get("gres") or ""))
    if m:
        return int(m.group(1))
    return 1 if resources.get("gpu_model") else 0


def run_rule(kind: str, spec: dict, job):
    """Run the training job of a rule's script (``job``: the ``snakemake`` object Snakemake gives
    the script): in its process, or one process per GPU of its resources with the config's
    launcher and DeepSpeed config (:func:`run`). What the config says of DeepSpeed and logging
    (``logging.report_to``, TensorBoard files beside the job log) is added to ``spec``."""
    from sftrl.logs import tensorboard_dir

    repository = Path(job.scriptdir).parent
    deepspeed = deepspeed_config(job.config["distributed"]["deepspeed"][kind], repository)
    spec = {
        **spec,
        "deepspeed": deepspeed,
        "report_to": job.config.get("logging", {}).get("report_to", "none"),
        "logging_dir": tensorboard_dir(job.log[0]),
    }
    return run(
        kind,
        spec,
        processes=gpu_count(job.resources),
        deepspeed=deepspeed,
        launcher=job.config["distributed"]["launcher"],
        spec_dir=job.params.work,
        threads=job.threads,
    )


def job_resources(resources: dict, group: str) -> dict:
    """The Snakemake resources of a rule group: ``resources.default`` overridden by
    ``resources.<group>``. A job with GPUs keeps ``cpus_per_gpu`` when it has one (the SLURM
    plugin would take ``cpus_per_task`` first), a job without keeps ``cpus_per_task``; a job with
    several GPUs runs one process per GPU on its node (:func:`run`), so it asks for one node."""
    merged = {**resources["default"], **resources.get(group, {})}
    gpus = gpu_count(merged)
    if gpus and "cpus_per_gpu" in merged:
        merged.pop("cpus_per_task", None)
    elif not gpus:
        merged.pop("cpus_per_gpu", None)
    if gpus > 1:
        merged.setdefault("nodes", 1)
    return merged


def job_threads(threads: int | str, resources: dict, group: str) -> int:
    """CPU threads (torch's, and the job's Snakemake ``threads:``) of a rule group's jobs: the
    config's ``threads`` when it is a number; when it is ``cpus``, the CPUs the group's resources
    give a job (``cpus_per_task``, or ``cpus_per_gpu`` x its GPUs; 1 when neither is set)."""
    if threads != "cpus":
        return int(threads)
    merged = job_resources(resources, group)
    if "cpus_per_gpu" in merged:
        return int(merged["cpus_per_gpu"]) * max(1, gpu_count(merged))
    return int(merged.get("cpus_per_task", 1))


def deepspeed_config(name: str | None, repository: str | os.PathLike) -> str | None:
    """A DeepSpeed config (``distributed.deepspeed.<kind>``) as an absolute path: relative to
    the working directory, or else to ``repository`` (the shipped config/deepspeed/*.json)."""
    if not name or os.path.isabs(name):
        return name
    here = Path(name).resolve()
    return str(here if here.exists() else Path(repository) / name)


def in_launched_process() -> bool:
    """True inside a process started by accelerate/torchrun (it sets LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(
    kind: str,
    spec_path: str | os.PathLike,
    processes: int,
    deepspeed: str | os.PathLike | None = None,
    launcher: str = "accelerate",
    port: int | None = None,
) -> list[str]:
    """The command that starts ``processes`` copies of job ``kind`` on this node."""
    if kind not in JOBS:
        raise LaunchError(f"unknown job kind {kind!r}; expected one of {', '.join(JOBS)}")
    if processes < 2:
        raise LaunchError(f"a launched job needs at least 2 processes, got {processes}")
    port = port or _free_port()
    tail = ["-m", "sftrl.launch", kind, str(spec_path)]
    if launcher == "accelerate":
        cmd = [sys.executable, "-m", "accelerate.commands.launch"]
        cmd += ["--num_processes", str(processes), "--num_machines", "1", "--main_process_port", str(port)]
        if deepspeed:
            if not Path(deepspeed).is_file():
                raise LaunchError(f"distributed.deepspeed.{kind}: {deepspeed} is not a file (a DeepSpeed JSON config)")
            cmd += ["--use_deepspeed", "--deepspeed_config_file", str(deepspeed)]
        else:
            cmd += ["--multi_gpu"]
        return cmd + tail
    if launcher == "torchrun":
        if deepspeed:
            raise LaunchError("distributed.launcher: torchrun runs plain DDP; DeepSpeed needs launcher: accelerate")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        return cmd + ["--master_addr", "127.0.0.1", "--master_port", str(port)] + tail
    raise LaunchError(f"distributed.launcher: expected one of {', '.join(LAUNCHERS)}, got {launcher!r}")


def run(
    kind: str,
    spec: dict,
    processes: int = 1,
    deepspeed: str | os.PathLike | None = None,
    launcher: str = "accelerate",
    spec_dir: str | os.PathLike | None = None,
    threads: int | None = None,
):
    """Run job ``kind`` with ``spec`` here (``processes <= 1``) or on ``processes`` processes.

    ``threads`` are the job's CPU threads, shared out among the launched processes (in-process,
    the caller has set them). The launched processes inherit this process's stdout/stderr (the
    job log). Returns the job function's result when run in-process, else None.
    """
    if processes <= 1 or in_launched_process():
        return JOBS[kind](spec)
    if threads:
        spec = {**spec, "threads": max(1, threads // processes)}
    spec_dir = Path(spec_dir or ".")
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec_path = spec_dir / f"{kind}-spec.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    cmd = launch_command(kind, spec_path, processes, deepspeed, launcher)
    print("launching:", " ".join(cmd), flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    proc = subprocess.run(cmd, stdout=sys.stdout, stderr=sys.stderr)
    if proc.returncode != 0:
        raise LaunchError(f"{launcher} launch of {processes} {kind} processes failed with exit code {proc.returncode}")
    spec_path.unlink(missing_ok=True)
    return None


# --------------------------------------------------------------------------------------------
# The jobs: what one process of a (possibly launched) training job does
# --------------------------------------------------------------------------------------------


def sft_job(spec: dict):
    """One SFT segment from a job spec (see scripts/sft.py for its keys)."""
    import polars as pl

    from sftrl.models import load_model, load_tokenizer
    from sftrl.sft import TrainSettings, train_segment

    hp = TrainSettings.from_config(spec["hp"], max_length=spec.get("max_length"))
    # auto keeps float32 weights (bf16 compute comes from the trainer's mixed precision): Adam steps
    # of lr 1e-6 would round away in bf16 weights. A bf16 dtype is for DeepSpeed, whose optimiser
    # keeps float32 master weights (sftrl.config refuses it for training without DeepSpeed).
    dtype = spec.get("dtype", "auto")
    model = load_model(spec["model"], dtype="float32" if dtype == "auto" else dtype)
    tokenizer = load_tokenizer(spec["model"])
    return train_segment(
        model,
        tokenizer,
        pl.read_parquet(spec["data"]),
        hp,
        stop_at=spec["stop_at"],
        model_out=spec["model_out"],
        work_dir=spec["work_dir"],
        resume_from=spec.get("resume_from"),
        state_out=spec.get("state_out"),
        metrics_path=spec.get("metrics"),
        chat=spec.get("chat", False),
        deepspeed=spec.get("deepspeed"),
        report_to=spec.get("report_to", "none"),
        logging_dir=spec.get("logging_dir"),
    )


def rl_job(spec: dict):
    """One RL run (PPO, or GRPO) from a job spec; see scripts/rl.py."""
    import polars as pl

    from sftrl.ppo import PPOConfig, train_ppo

    rl = spec["rl"]
    cfg = PPOConfig.from_dict({k: v for k, v in rl.items() if k not in ("algorithm", "num_generations")})
    print(f"{rl['algorithm']}: {cfg}")
    common = dict(
        model_dir=spec["model"],
        rl_hands=pl.read_parquet(spec["data"]),
        template=spec["template"],
        cfg=cfg,
        out_dir=spec["out"],
        work_dir=spec["work_dir"],
        metrics_path=spec.get("metrics"),
        dtype=spec.get("dtype", "auto"),
        report_to=spec.get("report_to", "none"),
        logging_dir=spec.get("logging_dir"),
    )
    if rl["algorithm"] == "grpo":
        from sftrl.grpo import train_grpo

        return train_grpo(num_generations=rl.get("num_generations", 8), **common)
    return train_ppo(**common)


JOBS: dict[str, Callable[[dict], object]] = {"sft": sft_job, "rl": rl_job}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in JOBS:
        print(f"usage: python -m sftrl.launch {{{','.join(JOBS)}}} SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text())
    if spec.get("threads"):
        import torch

        torch.set_num_threads(spec["threads"])
    result = JOBS[argv[0]](spec)
    if result is not None and int(os.environ.get("RANK", "0")) == 0:
        print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
