"""Seconds of the study's multi-turn evaluation, as the project runs it and two references, in one run.

    python benchmarks/eval_throughput.py [--model results/tiny/seed-0/models/sft-10] [--hands 234] [--turns 5]

The three ways answer the same OOD hands greedily for ``--turns`` attempts (a failed attempt gets
the verifier's feedback, as in the study):

* the project: batched, each turn continuing the previous turn's KV cache (sftrl.prefix_cache);
* whole dialogues: batched, each turn's prompt read ("prefilled") whole, as before the cache;
* one at a time: ``generate`` per dialogue, whole dialogues (no padding, no batching).

Without --model a freshly initialised tiny model is used (its answers run to max_new_tokens and
never solve a hand, so every hand plays every turn: the slow case). The project's answers must
equal the whole-dialogue answers (and so should one at a time's: padding must not change them);
the script prints how many do and the tokens each way reads.
"""

from __future__ import annotations

import argparse
import time

import torch

from sftrl import data
from sftrl.evaluate import GenerationSettings, Generator, run_episodes
from sftrl.models import build_tiny_model, build_tiny_tokenizer, load_model, load_tokenizer

ARCH = dict(hidden_size=128, intermediate_size=512, num_layers=4, num_heads=4, max_position_embeddings=192)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a checkpoint directory (default: a fresh tiny model)")
    ap.add_argument("--hands", type=int, default=234)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a study job: 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model:
        model, tok = load_model(args.model, dtype="float32"), load_tokenizer(args.model)
    else:
        tok = build_tiny_tokenizer()
        model = build_tiny_model(ARCH, tok, seed=0)
    hands = data.make_eval("ood", args.hands, 42, "compact")

    def timed(batch_size: int, reuse: bool, turns: int):
        gen = Generator(model, tok, "compact", GenerationSettings(args.max_new_tokens, batch_size, "greedy"),
                        reuse_cache=reuse)  # fmt: skip
        read = []
        generate_ids = gen.generate_ids

        def counting(prompts, **kwargs):
            out = generate_ids(prompts, **kwargs)
            read.append(gen.prefixes.last_read if reuse else sum(map(len, prompts)))
            return out

        gen.generate_ids = counting
        t0 = time.perf_counter()
        records = run_episodes(gen, hands, "compact", turns=turns)
        return time.perf_counter() - t0, records, sum(read)

    timed(args.hands, True, 1)  # warm-up
    cached_s, cached, cached_read = timed(args.hands, True, args.turns)
    whole_s, whole, whole_read = timed(args.hands, False, args.turns)
    single_s, single, _ = timed(1, False, args.turns)
    attempts = int(cached["turns"].sum())
    same = sum(a == b for a, b in zip(cached["responses"].to_list(), whole["responses"].to_list(), strict=True))
    print(f"model: {args.model or 'fresh tiny model'}; {args.hands} OOD hands, up to {args.turns} turns "
          f"({attempts} attempts), greedy, {args.threads} thread(s)")  # fmt: skip
    print("| way | seconds | tokens read | answers equal to whole dialogues |")
    print("|---|---|---|---|")
    print(f"| the project (KV cache continued across turns) | {cached_s:.2f} | {cached_read:,} | {same}/{args.hands} |")
    print(f"| whole dialogues each turn | {whole_s:.2f} | {whole_read:,} | - |")
    alone = sum(a == b for a, b in zip(single["responses"].to_list(), whole["responses"].to_list(), strict=True))
    print(f"| one at a time | {single_s:.2f} | - | {alone}/{args.hands} |")
    print(f"whole dialogues / project: {whole_s / cached_s:.2f}x; one at a time / project: {single_s / cached_s:.2f}x")


if __name__ == "__main__":
    main()
