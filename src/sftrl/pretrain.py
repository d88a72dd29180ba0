"""Pretraining of the tiny base model: a plain PyTorch loop over length-bucketed batches.

The tiny base learns the game from scratch on ``data/pretrain.parquet`` (prompt + completion,
loss on the completion). Its examples range from a 20-token single answer to a 100-token
feedback dialogue, so batches are cut from examples of similar length (buckets) instead of
padding every batch to the longest example; the order of the batches is shuffled with the seed.
Without the machinery of a general trainer around it (per-step metrics, data collation,
callbacks) a step costs what the model's matmuls cost (``benchmarks/train_step.py``).

SFT stays on TRL's ``SFTTrainer`` (``sftrl.sft``): it is the library path a user of the workflow
relies on for real models, with resumable segments and multi-GPU launch. The tiny base is one
short CPU job, so it is not resumable: a killed job starts again.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import polars as pl
import torch

from sftrl.sft import TrainSettings, tokenize_completions

IGNORE = -100


def lr_schedule(optimizer, name: str, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' ``constant``, ``linear`` and ``cosine`` schedules (``get_scheduler``; constant
    ignores the warm-up there too), without importing its Trainer machinery, which costs the job
    seconds (benchmarks/study_time.py): same factors step for step (tests/test_pretrain.py)."""

    def factor(step: int) -> float:
        if name == "constant":
            return 1.0
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        if name == "linear":
            return max(0.0, 1.0 - progress)
        if name == "cosine":
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        raise ValueError(f"scheduler: expected constant, linear or cosine, got {name!r}")

    factor(0), factor(total)  # an unknown name fails here, before training
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Batches of example indices of similar length, in a shuffled order; one pass over the data.

    The examples are shuffled, sorted by length within windows of 64 batches (so a batch is cut
    from examples of nearly equal length while which examples meet stays random), cut into
    batches, and the batches shuffled.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = 64 * batch_size
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return [b for b in batches if len(b) == batch_size]  # equal batches: every step weighs the same


def collate(examples: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on prompt and padding)."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, prompt_len) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def train_step(model, batch: dict[str, torch.Tensor], optimizer, scheduler, max_grad_norm: float) -> float:
    """One optimiser step on a :func:`collate` batch: mean cross-entropy over the completion
    tokens, gradient norm clipped, optimiser and schedule stepped. Returns the loss.
    (``benchmarks/train_step.py`` times this function against a plain PyTorch loop.)"""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE
    )
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def pretrain(
    model,
    tokenizer,
    data: pl.DataFrame,
    hp: TrainSettings,
    model_out: str | os.PathLike,
    metrics_path: str | os.PathLike | None = None,
    log_every: int = 20,
) -> dict:
    """Train ``model`` for ``hp.max_steps`` steps on ``data`` and save it to ``model_out``.

    AdamW (``hp.adam_betas``, ``hp.weight_decay``), the ``hp.scheduler`` schedule with
    ``hp.warmup`` warm-up steps, gradient norm clipped to ``hp.max_grad_norm``; the loss is the
    mean cross-entropy over the completion tokens of a batch. Logs ``step``, ``loss`` (mean over
    the last ``log_every`` steps), ``learning_rate`` and ``tokens_per_second`` as JSON lines.
    Deterministic for a seed on one machine. Returns the last logged row.
    """
    torch.manual_seed(hp.seed)
    rng = random.Random(hp.seed)
    examples = tokenize_completions(
        data, tokenizer, model.config.max_position_embeddings, "model.tiny.max_position_embeddings"
    )
    lengths = [len(ids) for ids, _ in examples]
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=hp.lr, betas=hp.adam_betas, weight_decay=hp.weight_decay, eps=1e-8
    )
    warmup = int(hp.warmup if hp.warmup >= 1 else hp.warmup * hp.max_steps)
    scheduler = lr_schedule(optimizer, hp.scheduler, warmup, hp.max_steps)
    if metrics_path is not None:
        metrics_path = Path(metrics_path)
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text("")
    model.train()
    batches: list[list[int]] = []
    losses, tokens, tic, row = [], 0, time.perf_counter(), {}
    for step in range(1, hp.max_steps + 1):
        if not batches:
            batches = bucketed_batches(lengths, hp.batch_size, rng)
            if not batches:
                raise ValueError(f"fewer pretraining examples ({len(lengths)}) than one batch ({hp.batch_size})")
        batch = collate([examples[i] for i in batches.pop()], tokenizer.pad_token_id)
        losses.append(train_step(model, batch, optimizer, scheduler, hp.max_grad_norm))
        tokens += int(batch["attention_mask"].sum())
        if step % log_every == 0 or step == hp.max_steps:
            elapsed = time.perf_counter() - tic
            row = {
                "step": step,
                "loss": sum(losses) / len(losses),
                "learning_rate": scheduler.get_last_lr()[0],
                "tokens_per_second": tokens / elapsed if elapsed > 0 else math.nan,
            }
            print(json.dumps(row), flush=True)
            if metrics_path is not None:
                with open(metrics_path, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
            losses, tokens, tic = [], 0, time.perf_counter()
    model.eval()
    from sftrl.models import save_model

    save_model(model, tokenizer, model_out)
    return row
