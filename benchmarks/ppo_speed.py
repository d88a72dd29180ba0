"""Seconds per PPO update (sftrl.ppo.train_ppo) on the tiny model.

    python benchmarks/ppo_speed.py                      # the default study's tiny architecture, untrained
    python benchmarks/ppo_speed.py --model results/tiny/models/sft-100 --episodes 128 --turns 5

Without ``--model`` a model of the ``config.yaml`` architecture is built with random weights; it
never emits EOS, so every response is ``--max-new-tokens`` long: an upper bound on the time of a
trained model, whose answers stop after ~10 characters. Prints one line per update and the mean.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import yaml

from sftrl import data
from sftrl.models import build_tiny_model, build_tiny_tokenizer, save_model
from sftrl.ppo import PPOConfig, train_ppo

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint to start from (default: untrained tiny model of config.yaml)")
    ap.add_argument("--updates", type=int, default=3)
    ap.add_argument("--episodes", type=int, default=64, help="episodes per update")
    ap.add_argument("--turns", type=int, default=1)
    ap.add_argument("--minibatch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = args.model
        if model_dir is None:
            arch = yaml.safe_load((ROOT / "config.yaml").read_text())["model"]["tiny"]
            tok = build_tiny_tokenizer()
            model_dir = save_model(build_tiny_model(arch, tok, arch["seed"]), tok, tmp / "start")
        cfg = PPOConfig(
            turns=args.turns, temperature=1.0, max_new_tokens=args.max_new_tokens, num_updates=args.updates,
            episodes_per_update=args.episodes, minibatch_size=args.minibatch, micro_batch_size=args.minibatch,
            rollout_batch_size=args.episodes, ppo_epochs=args.epochs, lr=1e-5, save_every=0,
        )  # fmt: skip
        tic = time.perf_counter()
        train_ppo(model_dir, data.make_rl(max(256, args.episodes), 0, "compact"), "compact", cfg, tmp / "out",
                  tmp / "work", tmp / "metrics.jsonl", progress=False)  # fmt: skip
        total = time.perf_counter() - tic
        rows = [json.loads(line) for line in (tmp / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        print(f"update {r['update']}: {r['time/update_seconds']:.2f} s, {r['charts/mean_turns']:.2f} turns/episode")
    mean = sum(r["time/update_seconds"] for r in rows) / len(rows)
    print(f"mean {mean:.2f} s per update ({args.episodes} episodes, {args.threads} thread(s)); "
          f"whole call {total:.1f} s including loading and saving")  # fmt: skip


if __name__ == "__main__":
    main()
