"""benchmarks/gpu_check.py without a GPU (what CI runs): it says so, exits 0 and prints the three
measurements -- SFT step, PPO update, 5-turn eval batch -- with positive, finite figures, on the
rehearsal chat model and (``--scale tiny``) through the paper-shape code path; and the paper
shapes themselves build (on the meta device, no memory) with the paper models' parameter counts.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
MEASUREMENTS = ("sft step", "ppo update", "eval batch")
PHASES = ("ppo rollout", "ppo optimisation")
NUMBERS = ("tokens", "wall s", "tokens/s", "peak memory")  # the table's numeric columns

# --scale tiny keeps the real vocabulary (152,064 rows): the smallest sizes keep it to seconds.
TINY = ["--scale", "tiny", "--sft-batch", "1", "--sft-steps", "1", "--ppo-episodes", "1", "--ppo-max-new-tokens",
        "8", "--ppo-epochs", "1", "--eval-hands", "2", "--eval-max-new-tokens", "8"]  # fmt: skip


def run_check(tmp_path: Path, *args: str) -> tuple[str, dict]:
    figures = tmp_path / "figures.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}  # CPU mode on any machine
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--threads", "1", "--json", str(figures), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout, json.loads(figures.read_text())


def table_rows(stdout: str) -> dict[str, dict[str, str]]:
    """The Markdown table's rows by measurement, each as {column: cell}."""
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(head), line
        rows[cells[0]] = dict(zip(head, cells, strict=True))
    return rows


def number(cell: str) -> float:
    return float(cell.replace(",", "").removesuffix(" GiB"))


@pytest.mark.slow  # trains: an SFT step and a PPO update
@pytest.mark.parametrize("args", [[], TINY], ids=["rehearsal-model", "scale-tiny"])
def test_cpu_mode(tmp_path, args):
    stdout, figures = run_check(tmp_path, *args)
    assert "No GPU" in stdout.splitlines()[0]
    assert "on the CPU instead" in stdout.splitlines()[0]
    what = "tiny scale" if args else "rehearsal chat model"
    assert what in stdout.splitlines()[0]

    rows = table_rows(stdout)
    assert set(MEASUREMENTS + PHASES) <= set(rows), sorted(rows)
    assert not any(name.startswith("rehearsal") for name in rows)  # the workflow is not run on the CPU
    for name in MEASUREMENTS + PHASES:
        assert rows[name]["device/dtype"] == "cpu fp32"
        for column in NUMBERS:
            value = number(rows[name][column])
            assert math.isfinite(value) and value > 0, (name, column, rows[name][column])

    assert figures["mode"] == "cpu" and figures["dtype"] == "float32"
    by_name = {r["measurement"]: r for r in figures["rows"]}
    assert set(MEASUREMENTS + PHASES) <= set(by_name)
    for name in MEASUREMENTS + PHASES:
        r = by_name[name]
        assert r["ok"] and r["error"] is None
        for key in ("tokens", "seconds", "tokens_per_s", "peak_bytes"):
            assert math.isfinite(r[key]) and r[key] > 0, (name, key, r[key])
        assert f"{r['seconds']:.2f}" == rows[name]["wall s"]  # the JSON holds the table's figures
        assert r["tokens"] == int(number(rows[name]["tokens"]))
    # the update's two phases add up to it
    ppo = by_name["ppo update"]
    phases = by_name["ppo rollout"]["seconds"] + by_name["ppo optimisation"]["seconds"]
    assert phases == pytest.approx(ppo["seconds"])


def load_script():
    """benchmarks/gpu_check.py as the module ``gpu_check`` (registered first: its dataclasses look it up)."""
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module
        spec.loader.exec_module(module)
    return sys.modules["gpu_check"]


@pytest.mark.parametrize(("name", "billions", "layers"), [("qwen2.5-7b", 7.62, 28), ("llama-3.2-11b-text", 9.78, 40)])
def test_paper_shapes(name, billions, layers):
    """The full shapes, built where they take no memory: Qwen2.5-7B's 7.62B parameters; Llama-3.2-11B's text
    model without its cross-attention layers, 9.78B."""
    gpu_check = load_script()
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=2)
    model = gpu_check.build_paper_shape(name, "full", tokenizer, torch.device("meta"), torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, abs=0.005)
    assert model.config.num_hidden_layers == layers and not model.config.tie_word_embeddings
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.generation_config.do_sample and model.generation_config.eos_token_id == 2
    tiny_cls, tiny = gpu_check.paper_shape_config(name, "tiny")
    assert tiny_cls == type(model).__name__
    assert tiny["vocab_size"] == model.config.vocab_size and tiny["num_hidden_layers"] == 2
