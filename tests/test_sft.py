"""SFT segments with TRL's SFTTrainer: loss falls, checkpoints are exact, resume is exact."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sftrl import data
from sftrl.models import build_tiny_model, build_tiny_tokenizer
from sftrl.sft import TrainSettings, train_segment

ARCH = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, max_position_embeddings=64)


@pytest.fixture(scope="module")
def sft_data():
    return data.make_sft(640, 0, "compact")


def _settings(**kw):
    base = dict(max_steps=12, lr=3e-3, scheduler="cosine", warmup=2, batch_size=16, per_device_batch_size=8, seed=0)
    return TrainSettings(**{**base, **kw})


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def test_segments_lower_the_loss_and_write_exactly_their_outputs(tmp_path, sft_data):
    tok = build_tiny_tokenizer()
    hp = _settings(max_steps=40)
    train_segment(
        build_tiny_model(ARCH, tok, 0),
        tok,
        sft_data,
        hp,
        40,
        tmp_path / "sft-40",
        tmp_path / "work",
        state_out=tmp_path / "state-40",
        metrics_path=tmp_path / "m.jsonl",
    )
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] * 0.8
    assert all("learning_rate" in r for r in rows if "loss" in r)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl", "sft-40", "state-40"]  # work dir cleaned
    assert (tmp_path / "state-40" / "optimizer.pt").is_file()


def test_chained_segments_equal_one_uninterrupted_run(tmp_path, sft_data):
    # The workflow's SFT: sft-6 then sft-12 resuming from state-6 must give sft-12 of a single run
    # (same data order, schedule and optimiser state).
    tok = build_tiny_tokenizer()
    hp = _settings()
    train_segment(build_tiny_model(ARCH, tok, 0), tok, sft_data, hp, 12, tmp_path / "full", tmp_path / "w0")
    train_segment(
        build_tiny_model(ARCH, tok, 0), tok, sft_data, hp, 6, tmp_path / "a", tmp_path / "w1", state_out=tmp_path / "s6"
    )
    train_segment(
        build_tiny_model(ARCH, tok, 99),
        tok,
        sft_data,
        hp,
        12,
        tmp_path / "b",
        tmp_path / "w2",
        resume_from=tmp_path / "s6",
    )
    full, chained, half = _weights(tmp_path / "full"), _weights(tmp_path / "b"), _weights(tmp_path / "a")
    assert all(torch.equal(full[k], chained[k]) for k in full)
    assert not all(torch.equal(full[k], half[k]) for k in full)


def test_requeued_segment_resumes_from_its_work_dir(tmp_path, sft_data):
    # A job killed after step 4 of an 8-step segment left work/checkpoint-4; the rerun resumes there
    # and ends with the weights of an uninterrupted segment.
    tok = build_tiny_tokenizer()
    hp = _settings(max_steps=8, save_every=4)
    train_segment(build_tiny_model(ARCH, tok, 0), tok, sft_data, hp, 8, tmp_path / "full", tmp_path / "w0")
    # simulate the interruption: train to 4 with the same work dir, keep its state there
    train_segment(
        build_tiny_model(ARCH, tok, 0), tok, sft_data, hp, 4, tmp_path / "x", tmp_path / "w1", state_out=tmp_path / "s4"
    )
    (tmp_path / "w1").mkdir()
    (tmp_path / "s4").rename(tmp_path / "w1" / "checkpoint-4")
    train_segment(build_tiny_model(ARCH, tok, 5), tok, sft_data, hp, 8, tmp_path / "resumed", tmp_path / "w1")
    full, resumed = _weights(tmp_path / "full"), _weights(tmp_path / "resumed")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_bad_stop_step_and_state_are_rejected(tmp_path, sft_data):
    tok = build_tiny_tokenizer()
    with pytest.raises(ValueError, match="stop_at"):
        train_segment(build_tiny_model(ARCH, tok, 0), tok, sft_data, _settings(), 13, tmp_path / "m", tmp_path / "w")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="trainer_state.json"):
        train_segment(
            build_tiny_model(ARCH, tok, 0),
            tok,
            sft_data,
            _settings(),
            6,
            tmp_path / "m",
            tmp_path / "w2",
            resume_from=tmp_path / "empty",
        )


def test_lora_segment_saves_a_merged_plain_checkpoint(tmp_path, sft_data):
    tok = build_tiny_tokenizer()
    lora = dict(r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    train_segment(
        build_tiny_model(ARCH, tok, 0),
        tok,
        sft_data,
        _settings(max_steps=2, lora=lora),
        2,
        tmp_path / "m",
        tmp_path / "w",
    )
    names = set(_weights(tmp_path / "m"))
    assert not any("lora" in n for n in names)
    assert "model.layers.0.self_attn.q_proj.weight" in names
