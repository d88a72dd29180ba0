"""Hostile invocations of the `sftrl` command (issue 14): each exits with status 2 and one line on
stderr naming the argument or the file, before any heavy work, leaving nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sftrl.cli import main

from conftest import save_tiny_llama

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """Two tiny checkpoints, a tiny model the evaluator can play, and broken copies of them."""
    from sftrl.models import build_tiny_model, build_tiny_tokenizer, save_model

    root = tmp_path_factory.mktemp("hostile")
    save_tiny_llama(root / "target", 0)
    save_tiny_llama(root / "donor", 1)
    tok = build_tiny_tokenizer()
    arch = dict(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, max_position_embeddings=64)
    save_model(build_tiny_model(arch, tok, 0), tok, root / "tiny")
    # broken checkpoints
    truncated = root / "truncated"
    shutil.copytree(root / "tiny", truncated)
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    for name, weight_map in [
        ("map-string", "model.safetensors"),
        ("map-list", ["model.safetensors"]),
        ("map-int", {"model.embed_tokens.weight": 3}),
        ("map-escape", {"model.embed_tokens.weight": "../target/model.safetensors"}),
        ("map-empty", {}),
    ]:
        bad = root / name
        shutil.copytree(root / "target", bad)
        (bad / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (root / "map-json").mkdir()
    shutil.copy(root / "target" / "config.json", root / "map-json")
    (root / "map-json" / "model.safetensors.index.json").write_text("{not json")
    (root / "no-config").mkdir()
    shutil.copy(root / "target" / "model.safetensors", root / "no-config")
    # outputs in the way
    (root / "file").write_text("x")
    (root / "full").mkdir()
    (root / "full" / "keep.txt").write_text("x")
    (root / "dir.parquet").mkdir()
    (root / "dangling").symlink_to(root / "nowhere")
    (root / "dangling.parquet").symlink_to(root / "nowhere")
    (root / "ev").mkdir()
    (root / "ev" / "id.parquet").mkdir()
    (root / "s.parquet").write_text("")
    (root / "s.index.parquet").mkdir()
    return root


def _pair(root: Path, out: str, *rest: str) -> list[str]:
    return ["--donor", str(root / "donor"), "--target", str(root / "target"), *rest, "--out", out]


def _cases(root: Path):
    """(argv, what the one line must name)."""
    r = lambda name: str(root / name)  # noqa: E731
    uv = ["edit", "uv-merge"]
    lr = ["edit", "layer-reset"]
    ev = ["evaluate", r("tiny")]
    sp = ["spectrum", r("donor"), r("target")]
    cases = [
        # devices
        ([*uv, *_pair(root, r("o"), "--top", "0.2", "--device", "bogus")], "--device"),
        ([*uv, *_pair(root, r("o"), "--top", "0.2", "--device", "cuda:99")], "--device"),
        ([*sp, "--out", r("o.parquet"), "--device", "tpu"], "--device"),
        ([*sp, "--out", r("o.parquet"), "--device", ""], "--device"),
        # malformed checkpoints: the file is named
        ([*uv, "--donor", r("map-string"), "--target", r("target"), "--top", "0.2", "--out", r("o")], "map-string"),
        ([*uv, "--donor", r("map-list"), "--target", r("target"), "--top", "0.2", "--out", r("o")], "map-list"),
        ([*uv, "--donor", r("map-int"), "--target", r("target"), "--top", "0.2", "--out", r("o")], "map-int"),
        ([*uv, "--donor", r("map-escape"), "--target", r("target"), "--top", "0.2", "--out", r("o")], "map-escape"),
        ([*uv, "--donor", r("map-empty"), "--target", r("target"), "--top", "0.2", "--out", r("o")], "map-empty"),
        ([*uv, "--donor", r("map-json"), "--target", r("target"), "--top", "0.2", "--out", r("o")], "map-json"),
        (["spectrum", r("map-int"), r("target"), "--out", r("o.parquet")], "map-int"),
        ([*lr, "--donor", r("donor"), "--target", r("file"), "--layers", "0", "--out", r("o")], "file"),
        (["evaluate", r("truncated")], "truncated"),
        (["evaluate", r("map-string")], "map-string"),
        (["evaluate", r("no-config")], "no-config"),
        (["evaluate", r("nowhere")], "nowhere"),
        # numbers out of range, caught before loading
        ([*ev, "--turns", "0"], "--turns"),
        ([*ev, "--turns", "-2"], "--turns"),
        ([*ev, "--turns", "11"], "--turns"),
        ([*ev, "--hands", "0"], "--hands"),
        ([*ev, "--hands", "1000000000"], "--hands"),
        ([*ev, "--hands", "1.5"], "--hands"),
        ([*ev, "--batch-size", "0"], "--batch-size"),
        ([*ev, "--batch-size", "99999999"], "--batch-size"),
        ([*ev, "--hands", "-5"], "--hands"),
        ([*ev, "--max-new-tokens", "100000"], "--max-new-tokens"),
        ([*ev, "--max-new-tokens", "0"], "--max-new-tokens"),
        ([*ev, "--seed", "-1"], "--seed"),
        ([*ev, "--seed", "99999999999999999999"], "--seed"),
        ([*ev, "--splits", "id,id"], "--splits"),
        ([*ev, "--splits", "test"], "--splits"),
        ([*ev, "--template", "chat"], "--template"),
        ([*lr, *_pair(root, r("o"), "--layers", "0-99999999")], "--layers"),
        ([*lr, *_pair(root, r("o"), "--layers", "3-1")], "--layers"),
        ([*lr, *_pair(root, r("o"), "--layers", "a")], "--layers"),
        ([*lr, *_pair(root, r("o"), "--layers", "9")], "no decoder layer"),
        ([*uv, *_pair(root, r("o"), "--top", "nan")], "--top"),
        ([*uv, *_pair(root, r("o"), "--top", "1.5")], "--top"),
        ([*uv, *_pair(root, r("o"), "--top", "0.2", "--bottom", "-0.1")], "--bottom"),
        ([*uv, *_pair(root, r("o"), "--top", "0.2", "--types", "qkv")], "--types"),
        ([*sp, "--out", r("o.parquet"), "--band", "0.7"], "--band"),
        ([*sp, "--out", r("o.parquet"), "--k", "0"], "--k"),
        ([*sp, "--out", r("o.parquet"), "--k", "abc"], "--k"),
        (["spectrum", r("donor"), r("nowhere"), "--out", r("o.parquet")], "nowhere"),
        ([*sp, "--out", r("o.parquet"), "--k-frac", "0"], "--k-frac"),
        ([*sp, "--out", r("o.parquet"), "--k", "4", "--k-frac", "0.2"], "--k-frac"),
        # outputs: refused up front
        ([*uv, *_pair(root, r("file"), "--top", "0.2")], "--out"),
        ([*uv, *_pair(root, r("full"), "--top", "0.2")], "--out"),
        ([*uv, *_pair(root, r("dangling"), "--top", "0.2")], "--out"),
        ([*uv, *_pair(root, r("file/sub"), "--top", "0.2")], "--out"),
        ([*uv, *_pair(root, r("donor"), "--top", "0.2")], "--out"),
        ([*lr, *_pair(root, r("target/edited"), "--layers", "0")], "--out"),
        ([*sp, "--out", r("dir.parquet")], "--out"),
        ([*sp, "--out", r("s5.txt")], "--out"),
        ([*sp, "--out", r("dangling.parquet")], "--out"),
        ([*sp, "--out", r("s.parquet")], "--out"),  # its index path is a directory
        ([*sp, "--out", r("donor/spec.parquet")], "--out"),
        ([*sp, "--out", r("file/spec.parquet")], "--out"),
        ([*ev, "--out", r("file")], "--out"),
        ([*ev, "--out", r("ev")], "--out"),  # ev/id.parquet is a directory
        ([*ev, "--out", r("dangling")], "--out"),
        ([*ev, "--out", r("tiny/eval")], "--out"),
        # the command line itself
        (["edit", "uv-merge", "--donor", r("donor"), "--target", r("target"), "--top", "0.2"], "--out"),
        (["transmogrify"], "transmogrify"),
        ([], "command"),
    ]
    return cases


def test_hostile_invocations_exit_2_with_one_line(place, capsys, monkeypatch):
    # Nothing heavy may start for a bad invocation: no SVD, no evaluation, no output written.
    # (The libraries' own checks -- checkpoint headers, layer ids -- come before those and count.)
    def reached(*args, **kwargs):
        raise AssertionError("work started for a bad invocation")

    monkeypatch.setattr("sftrl.spectrum.svd_fp32", reached)
    monkeypatch.setattr("sftrl.evaluate.evaluate_model", reached)
    monkeypatch.setattr("sftrl.checkpoints.ShardWriter.__init__", reached)
    capsys.readouterr()
    before = sorted(p.name for p in place.iterdir())
    cases = _cases(place)
    for argv, named in cases:
        try:
            code = main(argv)
        except AssertionError as e:
            raise AssertionError(f"{argv}: {e}") from None
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert err.count("\n") == 1 and named in err and "Traceback" not in err, (argv, err)
    assert sorted(p.name for p in place.iterdir()) == before  # nothing left behind
    assert not (place / "dir.index.parquet").exists()
    assert len(cases) >= 60


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output_place(place, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["spectrum", str(place / "donor"), str(place / "target"), "--out", str(locked / "s.parquet")]) == 2
        err = capsys.readouterr().err
        assert "not writable" in err and err.count("\n") == 1
    finally:
        locked.chmod(0o700)


def test_evaluate_prints_strict_json(place, tmp_path, capsys):
    # `--hands 0` used to print NaN; now every line and file is strict JSON (NaN -> null)
    from sftrl.cli import _finite

    assert _finite({"a": float("nan"), "b": [float("inf"), 1.0], "c": "x"}) == {"a": None, "b": [None, 1.0], "c": "x"}
    assert main(["evaluate", str(place / "tiny"), "--hands", "1", "--max-new-tokens", "2", "--out",
                 str(tmp_path / "e")]) == 0  # fmt: skip
    for line in capsys.readouterr().out.splitlines():
        json.loads(line, parse_constant=lambda c, line=line: pytest.fail(f"{c} in {line}"))
    json.loads((tmp_path / "e" / "id.json").read_text(), parse_constant=lambda c: pytest.fail(c))


@pytest.mark.parametrize(
    "argv, named",
    [
        (["evaluate", "{root}/tiny", "--turns", "0"], "--turns"),
        (
            [
                "edit",
                "uv-merge",
                "--donor",
                "{root}/map-list",
                "--target",
                "{root}/target",
                "--top",
                "0.2",
                "--out",
                "{root}/o",
            ],
            "map-list",
        ),  # fmt: skip
        (
            [
                "edit",
                "layer-reset",
                "--donor",
                "{root}/donor",
                "--target",
                "{root}/target",
                "--layers",
                "0-99999999",
                "--out",
                "{root}/o",
            ],
            "--layers",
        ),  # fmt: skip
    ],
)
def test_as_a_process_no_traceback(place, argv, named):
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    argv = [a.format(root=place) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "sftrl.cli", *argv], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and named in proc.stderr, proc.stderr
