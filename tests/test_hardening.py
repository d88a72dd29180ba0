"""Hardening (issue 14): atomic outputs never delete what they did not create, resumable state
is data and a planted pickle is never run, and the verifier holds up to mutated formulas.

The configuration and CLI probes are in test_config_bad.py and test_cli_hostile.py."""

from __future__ import annotations

import ast
import builtins
import json
import pickle
import random
import shutil
from fractions import Fraction
from pathlib import Path
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from sftrl import data
from sftrl.atomic import OutputExistsError, atomic_path, write_text
from sftrl.checkpoints import ShardWriter
from sftrl.cli import main
from sftrl.game import check_formula, solve
from sftrl.models import build_tiny_model, build_tiny_tokenizer, save_model
from sftrl.ppo import PPOConfig, train_ppo
from sftrl.sft import TrainSettings, train_segment
from sftrl.state import StateError, load_tree, save_tree

from conftest import save_tiny_llama

ARCH = dict(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, max_position_embeddings=64)


# ---------------------------------------------------------------------------------------------
# 1. atomic outputs


def test_edit_race_keeps_a_file_that_appeared_in_the_output(tmp_path, capsys):
    # The probe: `sftrl edit uv-merge ... --out raceout` while raceout/notes.txt is created.
    # The old atomic_path removed raceout (and the notes) to rename its own directory there.
    target, donor = save_tiny_llama(tmp_path / "target", 0), save_tiny_llama(tmp_path / "donor", 1)
    out = tmp_path / "raceout"
    real_write = ShardWriter.write

    def write_and_race(self, name, tensor):
        if not out.exists():  # someone else starts using the path while the edit runs
            out.mkdir()
            (out / "notes.txt").write_text("mine")
        real_write(self, name, tensor)

    capsys.readouterr()  # drop save_pretrained's progress output
    with mock.patch.object(ShardWriter, "write", write_and_race):
        argv = ["edit", "uv-merge", "--donor", str(donor), "--target", str(target), "--top", "0.2", "--out", str(out)]
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err and "appeared while" in err, err
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["donor", "raceout", "target"]  # no stray temporaries


def test_directory_output_refuses_an_occupied_destination(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(OutputExistsError, match="already exists"):
        with atomic_path(out, directory=True):
            pytest.fail("must refuse before any work")
    assert (out / "keep").read_text() == "x"
    # an empty directory (nothing to lose) is replaced
    (out / "keep").unlink()
    with atomic_path(out, directory=True) as tmp:
        (tmp / "w").write_text("new")
    assert (out / "w").read_text() == "new"


def test_file_output_never_replaces_a_file_that_appeared_meanwhile(tmp_path):
    path = tmp_path / "table.csv"
    with pytest.raises(OutputExistsError, match="appeared while"):
        with atomic_path(path) as tmp:
            tmp.write_text("ours")
            path.write_text("theirs")  # appears while the output is written
    assert path.read_text() == "theirs" and [p.name for p in tmp_path.iterdir()] == ["table.csv"]
    # a file that was there when the write began is the caller's old version: replaced
    write_text("new", path)
    assert path.read_text() == "new"
    # a directory never gets replaced by a file
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(OutputExistsError, match="is a directory"):
        write_text("x", tmp_path / "d.csv")


# ---------------------------------------------------------------------------------------------
# 2. resumable state: data only; a planted pickle is never run


class _Payload:
    """Unpickling this creates ``marker``: a stand-in for code an attacker would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path: Path, marker: Path, torch_format: bool = True) -> None:
    path.unlink(missing_ok=True)
    if torch_format:
        torch.save(_Payload(marker), path)
    else:
        path.write_bytes(pickle.dumps(_Payload(marker)))


def test_the_payload_is_live(tmp_path):
    # the control: loaded the unsafe way, the planted files do run code
    for torch_format in (True, False):
        marker = tmp_path / f"ran-{torch_format}"
        _plant(tmp_path / "p", marker, torch_format)
        if torch_format:
            torch.load(tmp_path / "p", weights_only=False)
        else:
            pickle.loads((tmp_path / "p").read_bytes())
        assert marker.exists()


def test_state_tree_round_trip_and_refusals(tmp_path):
    tree = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.arange(6.0).reshape(2, 3)[:, 1:]}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0], "foreach": None}],
        "python": (3, tuple(range(5)), None),
        "__odd": 1,
    }
    save_tree(tree, tmp_path, "t")
    back = load_tree(tmp_path, "t")
    assert back["param_groups"][0]["betas"] == (0.9, 0.999) and back["python"] == (3, (0, 1, 2, 3, 4), None)
    assert torch.equal(back["state"][0]["exp_avg"], tree["state"][0]["exp_avg"]) and back["__odd"] == 1
    with pytest.raises(TypeError, match="cannot be stored"):
        save_tree({"f": lambda: 0}, tmp_path, "u")
    marker = tmp_path / "ran"
    for name in ("t.json", "t.safetensors"):
        save_tree(tree, tmp_path, "t")
        _plant(tmp_path / name, marker)
        with pytest.raises(StateError, match=name):
            load_tree(tmp_path, "t")
    assert not marker.exists()


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory):
    """A tiny PPO run, uninterrupted, and the same run interrupted after update 1 (its state kept)."""
    root = tmp_path_factory.mktemp("ppo")
    tok = build_tiny_tokenizer()
    save_model(build_tiny_model(ARCH, tok, 0), tok, root / "start")
    hands = data.make_rl(16, 2, "compact")
    cfg = PPOConfig(turns=1, temperature=1.0, max_new_tokens=8, num_updates=2, episodes_per_update=8,
                    minibatch_size=8, micro_batch_size=4, rollout_batch_size=8, ppo_epochs=1, lr=1e-3,
                    lr_min=1e-4, save_every=1)  # fmt: skip
    train_ppo(root / "start", hands, "compact", cfg, root / "full", root / "w0", root / "m0.jsonl", progress=False)
    train_ppo(root / "start", hands, "compact", cfg, root / "x", root / "w1", root / "m1.jsonl", stop_after=1,
              progress=False)  # fmt: skip
    return root, hands, cfg


def _resume_ppo(run, tmp_path):
    root, hands, cfg = run
    work = tmp_path / "w"
    if not work.exists():
        shutil.copytree(root / "w1", work)
    train_ppo(root / "start", hands, "compact", cfg, tmp_path / "out", work, tmp_path / "m.jsonl", progress=False)
    return load_file(tmp_path / "out" / "model.safetensors")


def test_ppo_state_holds_data_only(ppo_run):
    state = ppo_run[0] / "w1" / "state-000001"
    names = sorted(p.name for p in state.iterdir())
    assert names == ["metrics.jsonl", "model.safetensors", "progress.json", "rng-0.json", "rng-0.safetensors",
                     "trainer.json", "trainer.safetensors"]  # fmt: skip
    for p in state.iterdir():
        head = p.read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK", f"{p.name} looks like a pickle or a torch zip"


def test_ppo_resume_never_opens_the_files_the_old_format_unpickled(ppo_run, tmp_path):
    shutil.copytree(ppo_run[0] / "w1", tmp_path / "w")
    state, marker = tmp_path / "w" / "state-000001", tmp_path / "ran"
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl"):
        _plant(state / name, marker, torch_format=False)
    for name in ("optimizer.bin", "scheduler.bin", "pytorch_model.bin"):
        _plant(state / name, marker)
    resumed = _resume_ppo(ppo_run, tmp_path)
    assert not marker.exists()
    full = load_file(ppo_run[0] / "full" / "model.safetensors")
    assert all(torch.equal(full[k], resumed[k]) for k in full)  # and the resume is still exact


@pytest.mark.parametrize(
    "victim",
    ["model.safetensors", "trainer.json", "trainer.safetensors", "rng-0.json", "rng-0.safetensors", "progress.json"],
)
def test_ppo_resume_refuses_a_state_file_replaced_by_a_pickle(ppo_run, tmp_path, victim):
    shutil.copytree(ppo_run[0] / "w1", tmp_path / "w")
    marker = tmp_path / "ran"
    _plant(tmp_path / "w" / "state-000001" / victim, marker)
    with pytest.raises(StateError, match=victim.replace(".", r"\.")):
        _resume_ppo(ppo_run, tmp_path)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_ppo_resume_refuses_a_state_of_the_old_pickled_format(ppo_run, tmp_path):
    shutil.copytree(ppo_run[0] / "w1", tmp_path / "w")
    (tmp_path / "w" / "state-000001" / "progress.json").write_text(json.dumps({"update": 1}))
    with pytest.raises(StateError, match="older format"):
        _resume_ppo(ppo_run, tmp_path)


@pytest.fixture(scope="module")
def sft_state(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    tok = build_tiny_tokenizer()
    hp = TrainSettings(max_steps=2, lr=1e-3, scheduler="constant", warmup=0, batch_size=8, per_device_batch_size=8,
                       seed=0)  # fmt: skip
    rows = data.make_sft(64, 0, "compact")
    train_segment(build_tiny_model(ARCH, tok, 0), tok, rows, hp, 1, root / "m1", root / "w", state_out=root / "s1")
    return root, tok, hp, rows


def _resume_sft(sft_state, state: Path, tmp_path: Path) -> None:
    root, tok, hp, rows = sft_state
    train_segment(build_tiny_model(ARCH, tok, 0), tok, rows, hp, 2, tmp_path / "m2", tmp_path / "w2",
                  resume_from=state)  # fmt: skip


def test_sft_state_keeps_no_pickle_that_resume_skips(sft_state, tmp_path):
    state = sft_state[0] / "s1"
    assert not (state / "training_args.bin").exists()  # a pickled TrainingArguments, never read back
    # planted anyway, it is never opened
    shutil.copytree(state, tmp_path / "s")
    _plant(tmp_path / "s" / "training_args.bin", tmp_path / "ran")
    _resume_sft(sft_state, tmp_path / "s", tmp_path)
    assert (tmp_path / "m2" / "model.safetensors").is_file() and not (tmp_path / "ran").exists()


@pytest.mark.parametrize("victim", ["optimizer.pt", "scheduler.pt", "rng_state.pth", "model.safetensors"])
def test_sft_resume_refuses_a_planted_pickle(sft_state, tmp_path, victim):
    # transformers loads these with torch.load(weights_only=True) (or safetensors): refused
    shutil.copytree(sft_state[0] / "s1", tmp_path / "s")
    _plant(tmp_path / "s" / victim, tmp_path / "ran")
    with pytest.raises(Exception) as err:
        _resume_sft(sft_state, tmp_path / "s", tmp_path)
    assert not (tmp_path / "ran").exists()
    assert (
        isinstance(err.value, pickle.UnpicklingError)
        or "safetensors" in repr(err.value).lower()
        or ("header" in str(err.value).lower())
    ), repr(err.value)
    assert not (tmp_path / "m2").exists()


def test_grpo_resume_refuses_planted_pickles(tmp_path):
    from sftrl.grpo import train_grpo

    tok = build_tiny_tokenizer()
    save_model(build_tiny_model(ARCH, tok, 0), tok, tmp_path / "start")
    hands = data.make_rl(8, 4, "compact")
    cfg = PPOConfig(num_updates=1, episodes_per_update=8, minibatch_size=8, micro_batch_size=8, ppo_epochs=1,
                    max_new_tokens=6, save_every=1)  # fmt: skip
    with mock.patch("sftrl.grpo.shutil.rmtree"):  # keep the work dir: the state of an interrupted run
        train_grpo(tmp_path / "start", hands, "compact", cfg, tmp_path / "g1", tmp_path / "w", tmp_path / "m.jsonl",
                   num_generations=4)  # fmt: skip
    [state] = list((tmp_path / "w").glob("checkpoint-*"))
    marker = tmp_path / "ran"
    _plant(state / "training_args.bin", marker)  # written by TRL, never read back
    for victim in ("rng_state.pth", "optimizer.pt"):
        _plant(state / victim, marker)
        with pytest.raises(pickle.UnpicklingError):
            cfg2 = PPOConfig(**{**cfg.__dict__, "num_updates": 2})
            train_grpo(tmp_path / "start", hands, "compact", cfg2, tmp_path / "g2", tmp_path / "w",
                       tmp_path / "m.jsonl", num_generations=4)  # fmt: skip
        assert not marker.exists() and not (tmp_path / "g2").exists()


# ---------------------------------------------------------------------------------------------
# 7. the verifier against an independent evaluation of mutated solver formulas


class _Reject(Exception):
    pass


_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b}  # fmt: skip


def _independently_correct(formula: str, numbers: list[int]) -> bool:
    """Solved by the study's rules, decided without sftrl.game: Python's own parser (``ast``, no
    evaluation) over the ASCII formula alphabet, binary + - * / on integer literals only, exact
    fractions, every hand number used exactly once, equal to 24."""
    text = formula.split("=", 1)[0]
    if not text or any(c not in "0123456789+-*/()" for c in text):
        return False
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    used: list[int] = []

    def value(node) -> Fraction:
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return Fraction(node.value)
        raise _Reject

    try:
        result = value(tree.body)
    except (_Reject, ZeroDivisionError):
        return False
    return sorted(used) == sorted(numbers) and result == 24


_ALPHABET = "0123456789+-*/()= "


def _mutate(rng: random.Random, formula: str, edits: int) -> str:
    chars = list(formula)
    for _ in range(edits):
        kind, i = rng.randrange(3), rng.randrange(len(chars) + 1)
        if kind == 0 or not chars:
            chars.insert(i, rng.choice(_ALPHABET))
        elif kind == 1:
            del chars[min(i, len(chars) - 1)]
        else:
            chars[min(i, len(chars) - 1)] = rng.choice(_ALPHABET)
    return "".join(chars)


def _agree(formula: str, numbers: list[int]) -> None:
    verdict = check_formula(formula, numbers)
    expected = _independently_correct(formula, numbers)
    assert verdict.solved == expected, (formula, numbers, verdict)
    assert (verdict.reward == 5.0) == expected and verdict.reward in {5.0, 1.0, -1.0} | {-k for k in range(2, 30)}


def _no_eval(*args, **kwargs):
    raise AssertionError("the verifier must never eval or exec")


hands = st.lists(st.integers(1, 13), min_size=4, max_size=4)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(numbers=hands, data=st.data())
def test_verifier_agrees_on_mutated_solutions(numbers, data):
    solutions = solve(numbers)
    assume(solutions)
    formula = data.draw(st.sampled_from(solutions))
    edits = data.draw(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 40), st.sampled_from(_ALPHABET)),
                               max_size=3))  # fmt: skip
    chars = list(formula)
    for kind, i, c in edits:
        i = min(i, len(chars))
        if kind == 0 or not chars:
            chars.insert(i, c)
        elif kind == 1:
            del chars[min(i, len(chars) - 1)]
        else:
            chars[min(i, len(chars) - 1)] = c
    with mock.patch.object(builtins, "eval", _no_eval), mock.patch.object(builtins, "exec", _no_eval):
        _agree("".join(chars), numbers)
        _agree(formula, numbers)  # the solver's own formula is correct


def test_verifier_at_probe_scale():
    # The probe's scale, seeded: 40,000 mutated solver formulas checked against the independent
    # evaluation, and 20,000 arbitrary strings (any characters, long numbers, deep nesting) that
    # must each give a Verdict. Seconds, not minutes.
    rng = random.Random(14)
    solvable = [h for h in (sorted(rng.randint(1, 13) for _ in range(4)) for _ in range(400)) if solve(h)]
    with mock.patch.object(builtins, "eval", _no_eval), mock.patch.object(builtins, "exec", _no_eval):
        for _ in range(40_000):
            numbers = rng.choice(solvable)
            _agree(_mutate(rng, rng.choice(solve(numbers)), rng.randint(1, 3)), numbers)
        pieces = ["(", ")", "+", "-", "*", "/", "=", " ", "\n", "٣", "1" * 150, "0", "24", "(" * 250, "x", "\x00"]
        for _ in range(20_000):
            text = "".join(rng.choice(pieces) + str(rng.randint(0, 13)) for _ in range(rng.randint(0, 12)))
            verdict = check_formula(text, rng.choice(solvable))
            assert isinstance(verdict.reward, float) and verdict.message.endswith(".")


# ---------------------------------------------------------------------------------------------
# 8. the README says what to do, and its limits are the code's


def test_readme_documents_unlock_requeue_and_the_limits():
    import yaml

    from sftrl import cli, config

    from conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    assert "snakemake --unlock" in readme and "LockException" in readme
    assert "sbatch --requeue" in readme and "PREEMPTED" in readme and "retries: 2" in readme
    defs = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())["$defs"]
    for name in ("posint", "batch", "tokens"):
        assert f"| {defs[name]['maximum']:,} |" in readme, name
    for value in (cli.MAX_HANDS, cli.MAX_BATCH, cli.MAX_NEW_TOKENS, cli.MAX_LAYER, config.MAX_VALUES):
        assert f"{value:,}" in readme, value
