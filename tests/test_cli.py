"""The `sftrl` command on two tiny Llama checkpoints, and its errors."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
from safetensors.torch import save_file

from sftrl.checkpoints import Checkpoint
from sftrl.cli import main

from conftest import save_tiny_llama

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return str(save_tiny_llama(root / "sft-800", 0)), str(save_tiny_llama(root / "sft-50", 1))


def generates(path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    out = model.generate(torch.tensor([[5, 6]]), max_new_tokens=3, do_sample=False, pad_token_id=0)
    return out.shape == (1, 5)


def test_edit_uv_merge(ckpts, tmp_path, capsys):
    target, donor = ckpts
    out = tmp_path / "uvmerge-sft-50-into-sft-800-top0.2"
    argv = [
        "edit",
        "uv-merge",
        "--donor",
        donor,
        "--target",
        target,
        "--top",
        "0.2",
        "--types",
        "q,k,v,down",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert "uv-merge top=0.2 bottom=0.0 types=q,k,v,down: 16 of 38 tensors from the donor" in capsys.readouterr().out
    assert generates(out)


def test_edit_layer_reset(ckpts, tmp_path):
    target, donor = ckpts
    out = tmp_path / "reset"
    assert (
        main(["edit", "layer-reset", "--donor", donor, "--target", target, "--layers", "0-0", "--out", str(out)]) == 0
    )
    name = "model.embed_tokens.weight"
    assert torch.equal(Checkpoint(out).read(name), Checkpoint(donor).read(name))
    assert generates(out)
    kept = tmp_path / "kept"
    assert (
        main(
            [
                "edit",
                "layer-reset",
                "--donor",
                donor,
                "--target",
                target,
                "--layers",
                "1",
                "--no-embeddings",
                "--out",
                str(kept),
            ]
        )
        == 0
    )
    assert torch.equal(Checkpoint(kept).read(name), Checkpoint(target).read(name))


def test_spectrum(ckpts, tmp_path, capsys):
    target, donor = ckpts
    out = tmp_path / "sft-50--sft-800.parquet"
    assert main(["spectrum", donor, target, "--out", str(out), "--k", "4", "--band", "0.25"]) == 0
    summary = pl.read_parquet(out)
    per_index = pl.read_parquet(tmp_path / "sft-50--sft-800.index.parquet")
    assert summary.height == 4 * 7 * 3 and set(summary["k"]) == {4}
    assert per_index.height == 4 * 7 * 32  # every matrix here has min(rows, cols) = 32
    assert f"wrote {out}" in capsys.readouterr().out


def test_errors_are_one_line_and_exit_2(ckpts, tmp_path, capsys):
    target, donor = ckpts
    wide = str(save_tiny_llama(tmp_path / "wide", 2, vocab_size=48))
    holed = tmp_path / "holed"
    shutil.copytree(donor, holed)
    src = Checkpoint(donor)
    save_file(
        {n: src.read(n) for n in src.names if n != "model.layers.3.mlp.up_proj.weight"}, holed / "model.safetensors"
    )
    cases = [
        (
            ["edit", "uv-merge", "--donor", str(tmp_path / "nowhere"), "--target", target, "--top", "0.2"],
            "nowhere: not a directory",
        ),
        (["edit", "uv-merge", "--donor", wide, "--target", target, "--top", "0.2"], "differ in shape"),
        (
            ["edit", "triplet-swap", "--donor", str(holed), "--target", target, "--top", "0.2"],
            "only in the target (e.g. model.layers.3.mlp.up_proj.weight)",
        ),
        (
            ["edit", "layer-reset", "--donor", donor, "--target", target, "--layers", "2-9"],
            "no decoder layer(s) [4, 5, 6, 7, 8, 9]",
        ),
        (["edit", "uv-merge", "--donor", donor, "--target", target, "--top", "1.5"], "expected a fraction in [0, 1]"),
        (["edit", "uv-merge", "--donor", donor, "--target", target, "--top", "0.2", "--types", "qkv"], "matrix types"),
        (["spectrum", donor, str(holed), "--types", "up"], "no tensor named model.layers.3.mlp.up_proj.weight"),
    ]
    capsys.readouterr()  # drop save_pretrained's progress output
    for argv, message in cases:
        out = str(tmp_path / "out.parquet") if argv[0] == "spectrum" else str(tmp_path / "out")
        assert main([*argv, "--out", out]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_module_entry_point_has_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    argv = [
        "edit",
        "uv-merge",
        "--donor",
        str(tmp_path / "a"),
        "--target",
        str(tmp_path / "b"),
        "--top",
        "0.2",
        "--out",
        str(tmp_path / "c"),
    ]
    result = subprocess.run([sys.executable, "-m", "sftrl.cli", *argv], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == f"sftrl: error: {tmp_path / 'b'}: not a directory"


def test_cli_evaluate_writes_summaries(tmp_path, capsys):
    import json

    from sftrl.cli import main
    from sftrl.models import build_tiny_model, build_tiny_tokenizer, save_model

    tok = build_tiny_tokenizer()
    arch = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, max_position_embeddings=64)
    save_model(build_tiny_model(arch, tok, 0), tok, tmp_path / "m")
    rc = main(["evaluate", str(tmp_path / "m"), "--hands", "6", "--max-new-tokens", "4", "--out", str(tmp_path / "e")])
    assert rc == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["split"] for x in lines] == ["id", "ood"] and all(x["n"] == 6 for x in lines)
    assert json.loads((tmp_path / "e" / "ood.json").read_text())["n"] == 6
    assert (tmp_path / "e" / "id.parquet").is_file()


def test_cli_evaluate_errors_are_one_line(tmp_path, capsys):
    from sftrl.cli import main

    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
    assert main(["evaluate", str(tmp_path), "--splits", "test"]) == 2
    assert "--splits" in capsys.readouterr().err


def test_chat_model_builds_a_loadable_chat_checkpoint_once(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "chat"
    assert main(["chat-model", str(out)]) == 0
    assert "Qwen2ForCausalLM" in capsys.readouterr().out
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Cards: ['J', 'Q', '7', '9']"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n") and "You are a helpful assistant." in text
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert model.generate(ids, max_new_tokens=3).shape[1] <= ids.shape[1] + 3
    # a second build refuses to overwrite, in one line naming the argument
    capsys.readouterr()
    assert main(["chat-model", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sftrl: error: DIR") and "already exists" in err and "\n" not in err
