"""Multi-process training jobs (sftrl.launch): the launch commands, and a real two-process run.

GPUs are not available here, so the real run uses the torchrun launcher with gloo on the CPU:
the same code path as `accelerate launch` on a GPU node (one process per device, the batch split
over them, outputs written once by the main process).
"""

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from sftrl import data, launch
from sftrl.models import build_tiny_model, build_tiny_tokenizer, save_model

ARCH = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, max_position_embeddings=64)
HP = dict(
    max_steps=8,
    lr=3e-3,
    scheduler="constant",
    warmup_ratio=0.0,
    batch_size=16,
    per_device_batch_size=8,
    weight_decay=0.0,
    adam_betas=[0.9, 0.999],
    max_grad_norm=1.0,
    seed=0,
    save_every=0,
)


def test_accelerate_command_has_one_process_per_gpu_and_the_deepspeed_config(tmp_path):
    ds = tmp_path / "zero3.json"
    ds.write_text("{}")
    cmd = launch.launch_command("sft", tmp_path / "spec.json", 4, deepspeed=ds, port=29555)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "4"
    assert cmd[cmd.index("--deepspeed_config_file") + 1] == str(ds) and "--use_deepspeed" in cmd
    assert cmd[-4:] == ["-m", "sftrl.launch", "sft", str(tmp_path / "spec.json")]
    plain = launch.launch_command("rl", "s.json", 2, port=29555)
    assert "--multi_gpu" in plain and "--use_deepspeed" not in plain


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(deepspeed="/nope/ds.json"), "distributed.deepspeed.sft: /nope/ds.json is not a file"),
        (dict(launcher="mpirun"), "distributed.launcher: expected one of accelerate, torchrun"),
        (dict(launcher="torchrun", deepspeed="x.json"), "DeepSpeed needs launcher: accelerate"),
        (dict(processes=1), "at least 2 processes"),
    ],
)
def test_bad_launch_settings_fail_naming_the_key(kwargs, message):
    args = dict(kind="sft", spec_path="spec.json", processes=2) | kwargs
    with pytest.raises(launch.LaunchError, match=message.replace(".", r"\.")):
        launch.launch_command(**args)


def test_the_launch_module_rejects_an_unknown_job_kind(capsys):
    assert launch.main(["evaluate", "spec.json"]) == 2
    assert "usage: python -m sftrl.launch {sft,rl}" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_train_one_segment_like_one_process(tmp_path):
    tok = build_tiny_tokenizer()
    base = save_model(build_tiny_model(ARCH, tok, 0), tok, tmp_path / "base")
    data.make_sft(256, 0, "compact").write_parquet(tmp_path / "sft.parquet")

    def spec(name):
        return dict(
            hp=HP,
            max_length=64,
            model=str(base),
            dtype="float32",
            data=str(tmp_path / "sft.parquet"),
            stop_at=8,
            model_out=str(tmp_path / name),
            work_dir=str(tmp_path / f"work-{name}"),
            state_out=str(tmp_path / f"state-{name}"),
            metrics=str(tmp_path / f"{name}.jsonl"),
            threads=1,
        )

    launch.run("sft", spec("one"), processes=1)
    launch.run("sft", spec("two"), processes=2, launcher="torchrun", spec_dir=tmp_path)

    state = json.loads((tmp_path / "state-two" / "trainer_state.json").read_text())
    assert state["global_step"] == 8 and state["train_batch_size"] == 8  # 8 per process x 2 = 16
    assert not (tmp_path / "work-two").exists() and not (tmp_path / "sft-spec.json").exists()
    one, two, start = (load_file(tmp_path / n / "model.safetensors") for n in ("one", "two", "base"))
    assert one.keys() == two.keys()
    # The same 16 examples per step, split over two processes: the same training up to float
    # rounding of the gradient all-reduce (here bit-equal: two summands) -- and far from the start.
    moved = max((one[k] - start[k]).abs().max().item() for k in one)
    diff = max((one[k] - two[k]).abs().max().item() for k in one)
    assert moved > 1e-2 and diff < moved / 20, (moved, diff)


def test_a_failing_launched_job_fails_the_caller(tmp_path):
    bad = dict(hp=HP, model=str(tmp_path / "missing"), data="x.parquet", stop_at=1, model_out="o", work_dir="w")
    with pytest.raises(launch.LaunchError, match="torchrun launch of 2 sft processes failed"):
        launch.run("sft", bad, processes=2, launcher="torchrun", spec_dir=tmp_path)


@pytest.mark.slow
def test_two_processes_run_ppo_and_share_the_episodes(tmp_path):
    tok = build_tiny_tokenizer()
    start = save_model(build_tiny_model(ARCH, tok, 0), tok, tmp_path / "sft")
    data.make_rl(16, 0, "compact").write_parquet(tmp_path / "rl.parquet")
    rl = dict(algorithm="ppo", turns=1, temperature=1.0, max_new_tokens=8, num_updates=2, episodes_per_update=8,
              minibatch_size=4, micro_batch_size=4, rollout_batch_size=4, save_every=0)  # fmt: skip
    spec = dict(rl=rl, model=str(start), data=str(tmp_path / "rl.parquet"), template="compact",
                out=str(tmp_path / "ppo"), work_dir=str(tmp_path / "work"), metrics=str(tmp_path / "m.jsonl"),
                dtype="float32", threads=1)  # fmt: skip
    launch.run("rl", spec, processes=2, launcher="torchrun", spec_dir=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2]  # written once, by the main process
    assert all(r["charts/episodes"] == 8 for r in rows), rows  # 4 per process, summed
    weights = load_file(tmp_path / "ppo" / "model.safetensors")
    assert not any("value_head" in k for k in weights)
    assert any(not torch.equal(weights[k], load_file(start / "model.safetensors")[k]) for k in weights)


def test_job_threads_are_a_number_or_each_groups_cpus():
    resources = {
        "default": {"cpus_per_task": 1},
        "base": {"cpus_per_task": 2},
        "rl": {"gpu": 4, "cpus_per_gpu": 8, "cpus_per_task": 3},
        "svd": {"gres": "gpu:a100:2", "cpus_per_gpu": 4},
        "tables": {"mem_mb": 100},
    }
    assert launch.job_threads(3, resources, "base") == 3  # a number: every job
    assert launch.job_threads("cpus", resources, "base") == 2
    assert launch.job_threads("cpus", resources, "sft") == 1  # the default group's
    assert launch.job_threads("cpus", resources, "rl") == 32  # cpus_per_gpu x GPUs
    assert launch.job_threads("cpus", resources, "svd") == 8
    assert launch.job_threads("cpus", {"default": {}}, "tables") == 1  # nothing set: one


def test_job_log_ends_with_the_jobs_import_and_work_time(tmp_path):
    """job_log's last line: seconds to start and import (before the job's code and while it
    ran, timed at importlib's loader) beside the rest; benchmarks/study_time.py reads it."""
    import importlib
    import re
    import time

    from sftrl.logs import job_log

    (tmp_path / "slow_module_for_test.py").write_text("import time\ntime.sleep(0.3)\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with job_log(tmp_path / "job.log"):
            importlib.import_module("slow_module_for_test")  # as transformers' lazy modules import
            time.sleep(0.2)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("slow_module_for_test", None)
    last = (tmp_path / "job.log").read_text().splitlines()[-1]
    m = re.fullmatch(r"job: timing: imports ([\d.]+) s \(([\d.]+) s before the job's code, ([\d.]+) s inside it\), "
                     r"other work ([\d.]+) s", last)  # fmt: skip
    assert m, last
    total, before, inside, other = map(float, m.groups())
    assert 0.3 <= inside < 0.3 + 0.2 and 0.2 <= other and total == pytest.approx(before + inside, abs=0.011)
    import importlib._bootstrap as bootstrap

    assert bootstrap._find_and_load.__name__ == "_find_and_load"  # the loader is itself again
