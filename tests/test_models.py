"""The tiny model and tokenizer: built offline, saved and loaded as a plain HF checkpoint."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sftrl.models import (
    ModelError,
    build_tiny_model,
    build_tiny_tokenizer,
    check_checkpoint_dir,
    load_model,
    load_tokenizer,
    save_model,
)
from sftrl.prompts import COMPACT_ALPHABET

ARCH = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, max_position_embeddings=64)


def test_tokenizer_is_character_level_and_round_trips():
    tok = build_tiny_tokenizer()
    assert len(tok) == 4 + len(COMPACT_ALPHABET)
    text = "J Q 7 9|11 12 13|12*(11-9)"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.padding_side == "left"


def test_save_load_round_trip(tmp_path: Path):
    tok = build_tiny_tokenizer()
    model = build_tiny_model(ARCH, tok, seed=0)
    save_model(model, tok, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".m.*"))  # no temporary left behind
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)
    tok2 = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert tok2("12*2")["input_ids"] == tok("12*2")["input_ids"]
    assert load_tokenizer(tmp_path / "m").padding_side == "left"
    out = load_model(tmp_path / "m", dtype="float32").generate(
        **tok2(["3 3 8 8|10 10 10|"], return_tensors="pt"), max_new_tokens=4, do_sample=False
    )
    assert out.shape[1] > 18


def test_same_seed_same_initialisation():
    tok = build_tiny_tokenizer()
    a, b = build_tiny_model(ARCH, tok, 3), build_tiny_model(ARCH, tok, 3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "does not exist"),  # no such path
        (lambda p: (p / "f").write_text("x") and p / "f", "not a directory"),  # a file
        (lambda p: (p / "d").mkdir() or p / "d", "no config.json"),  # an empty directory
    ],
)
def test_bad_model_path_is_named(tmp_path: Path, make, message):
    with pytest.raises(ModelError, match=f"model.path: .*{message}"):
        check_checkpoint_dir(make(tmp_path))


def test_bad_dtype_is_named(tmp_path: Path):
    tok = build_tiny_tokenizer()
    save_model(build_tiny_model(ARCH, tok, 0), tok, tmp_path / "m")
    with pytest.raises(ModelError, match="model.dtype"):
        load_model(tmp_path / "m", dtype="float8")
