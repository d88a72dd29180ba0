"""Seconds per training step of the default study's tiny model, and the CPU's matmul throughput.

    python benchmarks/train_step.py                 # 2 threads, the base rule's batch (64)
    python benchmarks/train_step.py --threads 1 --steps 20

The base rule pretrains for ``base.steps`` optimiser steps and the SFT segments for
``sft.max_steps``: at a fixed model size their time is steps x seconds per step, and seconds per
step is bounded by the FLOPs of a step over this CPU's matmul throughput. The script times the
forward + backward + AdamW step of ``LlamaForCausalLM`` on a real pretraining batch (padded to its
longest example, as the trainer does), outside the Trainer, and prints

* the measured seconds per step and the GFLOP/s it reaches (6 x parameters x tokens per step),
* a large fp32 matmul's GFLOP/s (the ceiling),
* the projected time of the base rule and of the SFT run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

from sftrl import data
from sftrl.models import build_tiny_model, build_tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    tic = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - tic) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "config.yaml"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30, help="timed steps (after 3 warm-up steps)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(Path(args.config).read_text())
    arch, batch = cfg["model"]["tiny"], cfg["base"]["batch_size"]

    tok = build_tiny_tokenizer()
    model = build_tiny_model(arch, tok, seed=0)
    params = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
    rows = data.make_pretrain(batch * (args.steps + 3), 0, "compact")
    texts = [p + c + tok.eos_token for p, c in zip(rows["prompt"], rows["completion"], strict=True)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(chunk):
        enc = tok(chunk, padding=True, return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = model(**enc, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        return enc["input_ids"].numel()

    for i in range(3):
        step(texts[i * batch : (i + 1) * batch])
    tokens, tic = 0, time.perf_counter()
    for i in range(3, args.steps + 3):
        tokens += step(texts[i * batch : (i + 1) * batch])
    per_step = (time.perf_counter() - tic) / args.steps
    achieved = 6 * params * tokens / args.steps / per_step / 1e9
    ceiling = matmul_gflops()
    print(f"tiny model: {params:,} non-embedding parameters, batch {batch}, "
          f"{tokens / args.steps / batch:.1f} tokens per sequence (padded), {args.threads} threads")  # fmt: skip
    print(f"train step: {per_step * 1000:.0f} ms ({achieved:.0f} GFLOP/s in the model's matmuls)")
    print(f"fp32 matmul 2048^3: {ceiling:.0f} GFLOP/s")
    print(f"projected: base {cfg['base']['steps']} steps = {cfg['base']['steps'] * per_step / 60:.1f} min, "
          f"SFT {cfg['sft']['max_steps']} steps = {cfg['sft']['max_steps'] * per_step / 60:.1f} min "
          "(plus ~10 s of start-up per job)")  # fmt: skip


if __name__ == "__main__":
    main()
