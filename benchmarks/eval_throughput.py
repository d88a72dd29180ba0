"""Hands per second of the batched evaluator vs one-at-a-time ``generate`` on the tiny model.

    python benchmarks/eval_throughput.py [--model results/tiny/models/sft-800] [--hands 234]

Without --model a freshly initialised tiny model is used (its answers run to max_new_tokens, the
slow case). Both paths answer the same OOD hands greedily, once (one turn), and must agree.
"""

from __future__ import annotations

import argparse
import time

import torch

from sftrl import data
from sftrl.evaluate import GenerationSettings, Generator, run_episodes
from sftrl.models import build_tiny_model, build_tiny_tokenizer, load_model, load_tokenizer

ARCH = dict(hidden_size=128, intermediate_size=512, num_layers=4, num_heads=4, max_position_embeddings=64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a checkpoint directory (default: a fresh tiny model)")
    ap.add_argument("--hands", type=int, default=234)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model:
        model, tok = load_model(args.model, dtype="float32"), load_tokenizer(args.model)
    else:
        tok = build_tiny_tokenizer()
        model = build_tiny_model(ARCH, tok, seed=0)
    hands = data.make_eval("ood", args.hands, 42, "compact")

    def timed(batch_size: int):
        gen = Generator(model, tok, "compact", GenerationSettings(args.max_new_tokens, batch_size, "greedy"))
        t0 = time.perf_counter()
        records = run_episodes(gen, hands, "compact", turns=1)
        return time.perf_counter() - t0, records["responses"].to_list()

    timed(args.hands)  # warm-up
    batched_s, batched = timed(args.hands)
    single_s, single = timed(1)
    same = sum(a == b for a, b in zip(batched, single, strict=True))
    print(f"model: {args.model or 'fresh tiny model'}; {args.hands} OOD hands, greedy, {args.threads} threads")
    print(f"batched evaluator   : {args.hands / batched_s:8.1f} hands/s ({batched_s:.2f} s)")
    print(f"one-at-a-time       : {args.hands / single_s:8.1f} hands/s ({single_s:.2f} s)")
    print(f"speed-up            : {single_s / batched_s:8.1f}x (goal: >= 20x)")
    print(f"identical answers   : {same}/{args.hands}")


if __name__ == "__main__":
    main()
