"""The tiny base's pretraining loop (sftrl.pretrain): length-bucketed batches, a falling loss,
a loadable checkpoint, the same weights for the same seed."""

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from sftrl import data
from sftrl.models import build_tiny_model, build_tiny_tokenizer, load_model
from sftrl.pretrain import bucketed_batches, collate, lr_schedule, pretrain
from sftrl.sft import TrainSettings

ARCH = dict(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, max_position_embeddings=128)


def test_bucketed_batches_cover_one_pass_in_batches_of_similar_length():
    rng = random.Random(0)
    lengths = [rng.choice([20, 21, 22, 60, 61, 100]) for _ in range(1000)]
    batches = bucketed_batches(lengths, 10, random.Random(1))
    assert len(batches) == 100 and all(len(b) == 10 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(1000))  # each example once
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert sum(s <= 2 for s in spread) >= 90  # nearly every batch holds one length band
    assert batches != bucketed_batches(lengths, 10, random.Random(2))  # the order follows the seed


@pytest.mark.parametrize("name", ["constant", "linear", "cosine"])
def test_lr_schedule_is_transformers_get_scheduler(name):
    """The base's schedules give transformers' learning rates step for step (without importing
    its Trainer machinery)."""
    from transformers import get_scheduler

    def rates(make):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        sched = make(opt)
        out = []
        for _ in range(50):
            out.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        return out

    ours = rates(lambda opt: lr_schedule(opt, name, 7, 40))
    theirs = rates(lambda opt: get_scheduler(name, opt, num_warmup_steps=7, num_training_steps=40))
    assert ours == pytest.approx(theirs, abs=1e-12)
    with pytest.raises(ValueError, match="scheduler: expected"):
        lr_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), "polynomial", 0, 10)


def test_collate_masks_the_prompt_and_the_padding():
    batch = collate([([1, 5, 6, 7, 2], 3), ([1, 5, 2], 2)], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7, 2], [1, 5, 2, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 7, 2], [-100, -100, 2, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]


def test_pretrain_lowers_the_loss_and_is_deterministic(tmp_path):
    tok = build_tiny_tokenizer()
    df = data.make_pretrain(2000, 0, "compact", feedback_fraction=0.3, wrapped_fraction=0.5)
    hp = TrainSettings(max_steps=60, lr=3e-3, scheduler="cosine", warmup=5, batch_size=32, seed=0)
    outs = []
    for run in ("a", "b"):
        metrics = tmp_path / f"{run}.jsonl"
        pretrain(build_tiny_model(ARCH, tok, 0), tok, df, hp, tmp_path / run, metrics_path=metrics, log_every=20)
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        assert [r["step"] for r in rows] == [20, 40, 60]
        assert rows[-1]["loss"] < 0.85 * rows[0]["loss"], rows  # measured: 3.14 -> 2.39
        outs.append(load_file(tmp_path / run / "model.safetensors"))
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])
    assert load_model(tmp_path / "a").config.max_position_embeddings == 128
