"""The project's training steps against a plain PyTorch loop, side by side in one run.

    python benchmarks/train_step.py                  # 2 threads (the base rule's), 30 timed steps
    python benchmarks/train_step.py --threads 1 --steps 20

Two comparisons on the default study's tiny model (``model.tiny`` of the config), each on the same
batches for both sides (same examples, batch size, tokens and threads):

* **base**: the ``base`` rule's step (``sftrl.pretrain.train_step``: forward, completion-only loss,
  gradient clipping, AdamW and the schedule) on its length-bucketed pretraining batches, against
  the plain loop (``model(**batch, labels=...)``, backward, AdamW) on the same batches;
* **sft**: the ``sft`` rule's step (TRL's ``SFTTrainer`` built by ``sftrl.sft.train_segment`` with
  the config's settings, timed per optimiser step by a callback) on SFT batches, against the plain
  loop on batches of the same size drawn from the same SFT examples, padded to the longest.

Each side runs twice, alternately (the TRL trainer once, between the plain loop's two runs), and
the faster run counts. Prints milliseconds per step, tokens per sequence (padded), the ratio of the
project's step to the plain loop's, the GFLOP/s the plain loop reaches (6 x non-embedding parameters x tokens) and a
large fp32 matmul's GFLOP/s (the ceiling of this CPU at these threads). Nothing is written outside a
temporary directory; no figure is asserted.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from sftrl import data
from sftrl.models import build_tiny_model, build_tiny_tokenizer
from sftrl.pretrain import bucketed_batches, collate, lr_schedule, train_step
from sftrl.sft import TrainSettings, tokenize_completions

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 3


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    tic = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - tic) / 1e9


def plain_loop(model, batches: list[dict]) -> float:
    """Seconds per step of forward + backward + AdamW, nothing else, after WARMUP steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tic = 0.0
    for i, batch in enumerate(batches):
        if i == WARMUP:
            tic = time.perf_counter()
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    return (time.perf_counter() - tic) / (len(batches) - WARMUP)


def project_base(model, batches: list[dict], hp: TrainSettings) -> float:
    """Seconds per step of the base rule's step function (sftrl.pretrain.train_step)."""
    opt = torch.optim.AdamW(model.parameters(), lr=hp.lr, betas=hp.adam_betas, weight_decay=hp.weight_decay)
    sched = lr_schedule(opt, hp.scheduler, 2, len(batches))
    tic = 0.0
    for i, batch in enumerate(batches):
        if i == WARMUP:
            tic = time.perf_counter()
        train_step(model, batch, opt, sched, hp.max_grad_norm)
    return (time.perf_counter() - tic) / (len(batches) - WARMUP)


def project_sft(model, tokenizer, rows, hp: TrainSettings, steps: int) -> float:
    """Seconds per optimiser step of the SFT rule's trainer (sftrl.sft.train_segment), from the
    times between the ends of consecutive steps after WARMUP steps."""
    import sftrl.sft as sft

    ends: list[float] = []
    make = sft._callbacks

    def with_clock(stop_at, metrics_path):
        from transformers import TrainerCallback

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                ends.append(time.perf_counter())

        return [*make(stop_at, metrics_path), Clock()]

    sft._callbacks = with_clock
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sft.train_segment(model, tokenizer, rows, hp, steps, Path(tmp) / "model", Path(tmp) / "work")
    finally:
        sft._callbacks = make
    gaps = [b - a for a, b in zip(ends[WARMUP - 1 :], ends[WARMUP:], strict=False)]
    return statistics.mean(gaps)


def as_plain(batch: dict) -> dict:
    """A collate batch as the plain loop feeds it (transformers' own shifted loss on labels)."""
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": batch["labels"]}


def tokens_per_sequence(batches: list[dict]) -> float:
    return statistics.mean(b["input_ids"].shape[1] for b in batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "config.yaml"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30, help=f"timed steps (after {WARMUP} warm-up steps)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(Path(args.config).read_text())
    arch, d = cfg["model"]["tiny"], cfg["data"]
    n = args.steps + WARMUP
    tok = build_tiny_tokenizer()

    def fresh_model():
        return build_tiny_model(arch, tok, seed=0)

    params = sum(p.numel() for name, p in fresh_model().named_parameters() if "embed" not in name)

    # base: the rule's pretraining mix, cut into its length-bucketed batches
    base_hp = TrainSettings.from_config(cfg["base"], max_length=arch["max_position_embeddings"])
    rows = data.make_pretrain(base_hp.batch_size * n * 2, d["seed"], "compact", frozenset(), d["answer"],
                              d["pretrain_feedback"], d["pretrain_wrapped"])  # fmt: skip
    examples = tokenize_completions(rows, tok, arch["max_position_embeddings"])
    order = bucketed_batches([len(ids) for ids, _ in examples], base_hp.batch_size, random.Random(0))[:n]
    base_batches = [collate([examples[i] for i in b], tok.pad_token_id) for b in order]
    # each side twice, alternately, the faster run kept: neither pays for a cold start
    base_plain = min(plain_loop(fresh_model(), [as_plain(b) for b in base_batches]) for _ in range(2))
    base_project = project_base(fresh_model(), base_batches, base_hp)
    base_plain = min(base_plain, plain_loop(fresh_model(), [as_plain(b) for b in base_batches]))
    base_project = min(base_project, project_base(fresh_model(), base_batches, base_hp))

    # sft: the rule's trainer on SFT examples; the plain loop on random batches of the same examples
    sft_hp = TrainSettings.from_config(cfg["sft"], max_length=arch["max_position_embeddings"])
    sft_rows = data.make_sft(sft_hp.batch_size * n * 2, d["seed"], "compact", answer=d["answer"])
    sft_examples = tokenize_completions(sft_rows, tok, arch["max_position_embeddings"])
    rng = random.Random(0)
    sft_batches = [
        collate(rng.sample(sft_examples, sft_hp.batch_size), tok.pad_token_id) for _ in range(n)
    ]  # fmt: skip
    sft_plain = plain_loop(fresh_model(), [as_plain(b) for b in sft_batches])
    sft_project = project_sft(fresh_model(), tok, sft_rows, sft_hp, n)
    sft_plain = min(sft_plain, plain_loop(fresh_model(), [as_plain(b) for b in sft_batches]))

    ceiling = matmul_gflops()
    print(f"tiny model: {params:,} non-embedding parameters, {args.threads} thread(s), {args.steps} timed steps "
          f"after {WARMUP} warm-up steps")  # fmt: skip
    print(f"fp32 matmul 2048^3: {ceiling:.0f} GFLOP/s (the ceiling)")
    print("| step | batch | tokens/sequence (padded) | plain loop ms | project ms | project / plain | plain GFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    for name, project, plain, batches, bs in (
        ("base (sftrl.pretrain.train_step)", base_project, base_plain, base_batches, base_hp.batch_size),
        ("sft (TRL SFTTrainer via sftrl.sft)", sft_project, sft_plain, sft_batches, sft_hp.batch_size),
    ):
        tokens = tokens_per_sequence(batches)
        gflops = 6 * params * tokens * bs / plain / 1e9
        print(f"| {name} | {bs} | {tokens:.1f} | {plain * 1000:.0f} | {project * 1000:.0f} | "
              f"{project / plain:.2f}x | {gflops:.0f} |")  # fmt: skip
    print(f"projected: base {base_hp.max_steps} steps = {base_hp.max_steps * base_project / 60:.1f} min, "
          f"SFT {sft_hp.max_steps} steps = {sft_hp.max_steps * sft_project / 60:.1f} min "
          "(plus each job's start-up)")  # fmt: skip


if __name__ == "__main__":
    main()
