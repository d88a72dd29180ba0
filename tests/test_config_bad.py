"""Malformed configurations (issue 14): each of the table's configs is refused before any job, with
a short message naming its key; a handful also through `snakemake -n`, which must leave
`results/` (and everything outside the working directory) untouched."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
import yaml

from sftrl.config import (
    LONGEST_SOLUTION_CHARS,
    ConfigError,
    check_files,
    positions_needed,
    seeds_from_command_line,
    short,
    validate,
)

from conftest import ROOT, default_config, reduced_config, run_snakemake

BOMB = [["lol"] * 9]
for _ in range(8):
    BOMB = [BOMB] * 9  # 9^9 strings when expanded; a few kilobytes as YAML aliases


def _set(path: str, value):
    """A mutation setting the dotted ``path`` (created where missing) to ``value``."""

    def mutate(cfg):
        *parents, last = path.split(".")
        node = cfg
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return mutate


def _drop(path: str):
    def mutate(cfg):
        *parents, last = path.split(".")
        node = cfg
        for key in parents:
            node = node[key]
        del node[last]

    return mutate


def _both(*mutations):
    def mutate(cfg):
        for m in mutations:
            m(cfg)

    return mutate


# (mutation of the default config, the key its message must name)
CASES = [
    # outputs outside results/<study>
    (_set("study", ".."), "study"),
    (_set("study", "."), "study"),
    (_set("study", "tiny\n"), "study"),
    (_set("study", "a/b"), "study"),
    (_set("study", ""), "study"),
    (_set("study", "-x"), "study"),
    (_set("study", "x" * 65), "study"),
    (_set("study", 5), "study"),
    # integers are integers
    (_set("data.sft_size", 64.0), "data.sft_size"),
    (_set("sft.checkpoints", [25.0]), "sft.checkpoints[0]"),
    (_set("data.sft_size", True), "data.sft_size"),
    (_set("model.tiny.seed", 1.5), "model.tiny.seed"),
    (_set("rl.num_updates", 8.0), "rl.num_updates"),
    # sizes bounded
    (_set("data.sft_size", 10**9), "data.sft_size"),
    (_set("data.rl_size", 10**12), "data.rl_size"),
    (_set("data.eval_size", 10**6), "data.eval_size"),
    (_set("data.eval_size", 0), "data.eval_size"),
    (_set("data.pretrain_size", -1), "data.pretrain_size"),
    (_set("sft.max_steps", 10**9), "sft.max_steps"),
    (_set("sft.checkpoints", [10**9]), "sft.checkpoints[0]"),
    (_set("sft.batch_size", 10**6), "sft.batch_size"),
    (_set("eval.max_new_tokens", 10**6), "eval.max_new_tokens"),
    (_set("rl.minibatch_size", 10**6), "rl.minibatch_size"),
    (_set("rl.num_updates", 10**9), "rl.num_updates"),
    (_set("threads", 10**6), "threads"),
    (_set("model.tiny.hidden_size", 10**9), "model.tiny.hidden_size"),
    (
        _set(
            "model.tiny",
            {
                "hidden_size": 16384,
                "intermediate_size": 65536,
                "num_layers": 64,
                "num_heads": 128,
                "max_position_embeddings": 192,
                "seed": 0,
            },
        ),
        "model.tiny",
    ),  # fmt: skip
    (_set("resources.sft.gpu", 1000), "resources.sft.gpu"),
    (_set("resources.default.runtime", 10**9), "resources.default.runtime"),
    (_set("resources.default.mem_mb", 0), "resources.default.mem_mb"),
    (_set("data.seed", -1), "data.seed"),
    (_set("data.seed", 2**40), "data.seed"),
    (_set("rl.seed", 10**30), "rl.seed"),
    # finite numbers
    (_set("sft.lr", float("nan")), "sft.lr"),
    (_set("sft.lr", float("inf")), "sft.lr"),
    (_set("base.lr", float("-inf")), "base.lr"),
    (_set("rl.lr", float("nan")), "rl.lr"),
    (_set("rl.gamma", float("nan")), "rl.gamma"),
    (_set("sft.lr", "1e-4"), "sft.lr"),  # YAML reads it as text
    # ranges and enums of the schema
    (_set("sft.lr", 0), "sft.lr"),
    (_set("sft.adam_betas", [0.9, 1.0]), "sft.adam_betas"),
    (_set("sft.adam_betas", [0.9]), "sft.adam_betas"),
    (_set("sft.warmup_ratio", 1.5), "sft.warmup_ratio"),
    (_set("sft.lora.dropout", 2), "sft.lora.dropout"),
    (_set("sft.lora.r", 0), "sft.lora.r"),
    (_set("sft.checkpoints", []), "sft.checkpoints"),
    (_set("sft.checkpoints", [5, 5]), "sft.checkpoints"),
    (_set("sft.keep_state", "yes"), "sft.keep_state"),
    (_set("eval.turns", 0), "eval.turns"),
    (_set("eval.turns", 11), "eval.turns"),
    (_set("eval.batch_size", 0), "eval.batch_size"),
    (_set("eval.decoding", "beam"), "eval.decoding"),
    (_set("eval.arithmetic", "approx"), "eval.arithmetic"),
    (_set("data.holdout_fraction", 0.9), "data.holdout_fraction"),
    (_set("data.answer", "last"), "data.answer"),
    (_set("model.source", "remote"), "model.source"),
    (_set("model.dtype", "int8"), "model.dtype"),
    (_set("model.dtype", "bfloat16"), "model.dtype"),  # training in bf16 weights without DeepSpeed
    (_set("threads", 0), "threads"),
    (_set("spectrum.k_frac", 0), "spectrum.k_frac"),
    (_set("spectrum.band", 0.7), "spectrum.band"),
    (_set("spectrum.pairs", ["x"]), "spectrum.pairs[0]"),
    (_set("spectrum.types", ["q", "qkv"]), "spectrum.types"),
    (_set("edits.types", "some"), "edits.types"),
    (_set("rl.algorithm", "dqn"), "rl.algorithm"),
    (_set("rl.gamma", 1.5), "rl.gamma"),
    (_set("rl.turns", 0), "rl.turns"),
    (_set("rl.save_every", -1), "rl.save_every"),
    (_set("distributed.launcher", "mpirun"), "distributed.launcher"),
    (_set("resources.default.slurm_account", "a\n#SBATCH --wrap=x"), "resources.default.slurm_account"),
    (_set("data.sft_sze", 10), "data.sft_sze"),
    (_set("sfft", {}), "sfft"),
    (_drop("eval.turns"), "eval.turns"),
    (_set("data", {1: 2, **default_config()["data"]}), "data"),  # a key that is not a string
    # cross-checks of meaning
    (_set("sft.checkpoints", [500]), "sft.checkpoints"),
    (_set("sft.per_device_batch_size", 48), "sft.batch_size"),
    (_set("rl.from", [7]), "rl.from"),
    (_set("edits.donor", "sft-999"), "edits.donor"),
    (_set("edits.donor", "sft-25\n"), "edits.donor"),
    (_set("edits.target", "ppo-7"), "edits.target"),
    (_set("edits.target", "sft-400/../x"), "edits.target"),
    (_both(_set("edits.donor", "ppo-25"), _set("rl.from", [400])), "edits.donor"),
    (_set("edits.layer_reset", ["0-1"]), "edits.layer_reset[0]"),  # the old layer-id form
    (_set("edits.layer_reset", [[0, 0.25], [0.75, 0.5]]), "edits.layer_reset[1]"),  # empty range
    (_set("edits.layer_reset", [[0, 0.1]]), "edits.layer_reset[0]"),  # 4 layers: holds none
    (_set("edits.layer_reset", [[0, 1.5]]), "edits.layer_reset[0][1]"),  # past the depth
    (_set("edits.layer_reset", [[0, 0.25], [0, 0.250000001]]), "edits.layer_reset[1]"),  # same name
    (_set("sft.max_length", 8), "sft.max_length"),
    (_set("sft.max_length", 100000), "sft.max_length"),  # more than the tiny model's positions
    (_set("sft.max_length", 30), "sft.max_length"),  # less than an SFT example of the compact template
    (_set("edits.uv_merge", [[0.2]]), "edits.uv_merge[0]"),
    (_set("edits.uv_merge", [[1.5, 0]]), "edits.uv_merge[0][0]"),
    (_set("edits.uv_merge", [[0.00001, 0.0]]), "edits.uv_merge[0]"),
    (_set("edits.sigma_swap", [[0.1, 0.0], [0.1000001, 0.0]]), "edits.sigma_swap[1]"),
    (_drop("spectrum"), "spectrum"),
    (_set("seeds", [0, 0]), "seeds"),
    (_set("seeds", []), "seeds"),
    (_set("seeds", [-1]), "seeds[0]"),
    (_set("seeds", [0, 10000]), "seeds[1]"),
    (_set("seeds", 3), "seeds"),
    (_set("seeds", ["a"]), "seeds[0]"),
    (_set("model.tiny.num_heads", 3), "model.tiny.num_heads"),
    (_set("model.tiny.num_heads", 128), "model.tiny.num_heads"),  # 1 channel per head: RoPE needs 2
    (_set("model.tiny.max_position_embeddings", 4), "model.tiny.max_position_embeddings"),
    (_set("model.tiny.max_position_embeddings", 100), "model.tiny.max_position_embeddings"),  # 5 turns
    (_set("model.template", "paper"), "model.template"),
    (_set("model.source", "local"), "model.path"),
    (_both(_set("model.source", "local"), _set("model.path", "config.yaml")), "model.path"),
    (_both(_set("model.source", "local"), _set("model.path", "results/tiny/models/sft-5")), "model.path"),
    (_set("distributed.deepspeed.rl", "config/deepspeed/nope.json"), "distributed.deepspeed.rl"),
    (_set("distributed.deepspeed.sft", "config"), "distributed.deepspeed.sft"),
    (_set("distributed.deepspeed.sft", "README.md"), "distributed.deepspeed.sft"),
    (
        _both(
            _set("distributed.launcher", "torchrun"), _set("distributed.deepspeed.sft", "config/deepspeed/zero3.json")
        ),
        "distributed.deepspeed.sft",
    ),  # fmt: skip
    # values too large to show: the message stays short
    (_set("model.path", "/x" * 10**6), "model.path"),
    (_set("data.sft_size", BOMB), "data.sft_size"),
    (_set("sft.checkpoints", BOMB), "sft.checkpoints"),
    (_set("edits.layer_reset", BOMB), "edits.layer_reset"),
    (_set("resources.default", {f"k{i}": BOMB for i in range(3)}), "resources.default"),
]


def _message(mutate, base_dir: Path) -> str:
    cfg = default_config()
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        validate(cfg, base_dir=base_dir)
    return str(err.value)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A working directory like the repository's root: relative paths (config/deepspeed/...,
    README.md) resolve as in a run from there, and results/ must never appear."""
    work = tmp_path_factory.mktemp("work")
    shutil.copytree(ROOT / "config", work / "config")
    for name in ("config.yaml", "README.md"):
        shutil.copy(ROOT / name, work / name)
    return work


@pytest.mark.parametrize("mutate, key", CASES, ids=[f"{i:03d}-{key}" for i, (_, key) in enumerate(CASES)])
def test_bad_config_is_refused_naming_its_key(mutate, key, workdir):
    message = _message(mutate, workdir)
    lines = message.splitlines()
    assert lines[0] == "invalid configuration:" and len(lines) >= 2, message
    assert any(key in line for line in lines[1:]), (key, message)
    assert all(len(line) <= 700 for line in lines) and len(message) < 8000, message[:2000]
    assert "Traceback" not in message
    assert not (workdir / "results").exists()  # validation writes nothing


def test_the_table_is_the_probe_and_more():
    assert len(CASES) >= 60


def test_the_shipped_configs_are_valid():
    """The default study here; every study file under config/ in tests/test_study_configs.py
    (merged as Snakemake merges it, with its model.path made visible)."""
    validate(default_config(), base_dir=ROOT, files=[ROOT / "config.yaml"])
    studies = [p for p in sorted((ROOT / "config").glob("*.yaml")) if p.name != "schema.yaml"]
    assert len(studies) >= 2 and not check_files(studies)


# ---------------------------------------------------------------------------------------------
# the files themselves


def test_duplicate_keys_are_found_with_their_lines(tmp_path):
    text = (ROOT / "config.yaml").read_text()
    assert "\n  lr: 3.0e-4" in text
    bad = tmp_path / "dup.yaml"
    bad.write_text(text.replace("\n  lr: 3.0e-4", "\n  lr: 3.0e-4\n  lr: 1.0e-6", 1))
    [problem] = check_files([bad])
    assert "duplicate key sft.lr" in problem and f"{bad}:" in problem
    # merge keys are not duplicates; a JSON file is checked as JSON
    merged = tmp_path / "merge.yaml"
    merged.write_text("a: &a {x: 1, y: 2}\nb:\n  <<: *a\n  x: 3\n")
    assert check_files([merged]) == []
    js = tmp_path / "c.json"
    js.write_text('{"study": "a", "study": "b"}')
    assert "key 'study' is given twice" in check_files([js])[0]
    assert "does not exist" in check_files([tmp_path / "nope.yaml"])[0]
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * (2 << 20))
    assert "bytes; a config file is at most" in check_files([big])[0]


def test_alias_bomb_in_a_typed_field_gives_a_short_message():
    cfg = default_config()
    cfg["data"]["sft_size"] = BOMB
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert "data.sft_size" in str(err.value) and len(str(err.value)) < 1000
    assert len(short(BOMB)) <= 200 and short("x" * 10**6).endswith("...")


def test_seeds_from_the_command_line_become_integers_signs_included():
    """`--config 'seeds=[-1]'` reaches the config as strings: a negative seed is named as out of
    range, not as text; what is not a number is left for the schema to name."""
    assert seeds_from_command_line({"seeds": ["0", " 2", "-1", "+3"]})["seeds"] == [0, 2, -1, 3]
    assert seeds_from_command_line({"seeds": ["a", "1"]})["seeds"] == ["a", "1"]
    cfg = reduced_config()
    cfg["seeds"] = ["-1"]
    with pytest.raises(ConfigError, match=r"seeds\[0\]: -1 is out of range: expected at least 0"):
        validate(seeds_from_command_line(cfg))


# ---------------------------------------------------------------------------------------------
# through Snakemake: nothing under results/, nothing outside the working directory


def _snakemake_refuses(tmp_path: Path, config_text: str, key: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "config.yaml").write_text(config_text)
    proc = run_snakemake(work, "-n", "--cores", "1", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and key in out, out[-3000:]
    assert "Traceback" not in out and len(out) < 20_000, out[-3000:]
    assert not (work / "results").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # `study: ..` wrote nowhere
    assert {p.name for p in work.iterdir()} <= {"config.yaml", ".snakemake"}


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c: c.update(study=".."), "study"),
        (lambda c: c["data"].update(sft_size=64.0), "data.sft_size"),
        (lambda c: c["edits"].update(layer_reset=[[0.5, 0.25]]), "edits.layer_reset[0]"),
        (lambda c: c["distributed"]["deepspeed"].update(rl="nope.json"), "distributed.deepspeed.rl"),
    ],
)
def test_snakemake_refuses_before_any_job(tmp_path, edit, key):
    cfg = reduced_config()
    edit(cfg)
    _snakemake_refuses(tmp_path, yaml.safe_dump(cfg, sort_keys=False), key)


def test_snakemake_refuses_a_duplicate_key(tmp_path):
    text = yaml.safe_dump(reduced_config(), sort_keys=False)
    _snakemake_refuses(tmp_path, text.replace("study: test\n", "study: test\nstudy: ..\n", 1), "duplicate key study")


def test_snakemake_refuses_an_alias_bomb(tmp_path):
    cfg = reduced_config()
    cfg["data"].pop("sft_size")
    text = yaml.safe_dump(cfg, sort_keys=False).replace("data:\n", "data:\n  sft_size: " + _flow_bomb() + "\n", 1)
    assert len(text) < 20_000
    _snakemake_refuses(tmp_path, text, "data.sft_size")


def _flow_bomb() -> str:
    """One YAML flow node defining its anchors at first use: 9 levels of 9 references."""
    node = "&l0 [" + ", ".join(["lol"] * 9) + "]"
    for i in range(1, 9):
        node = f"&l{i} [" + ", ".join([node] + [f"*l{i - 1}"] * 8) + "]"
    return node


# ---------------------------------------------------------------------------------------------
# constants behind the checks


def test_longest_solution_and_prompt_match_the_game():
    from sftrl.game import solve
    from sftrl.models import build_tiny_tokenizer
    from sftrl.prompts import get_template

    longest = max(len(f) for hand in itertools.combinations_with_replacement(range(1, 14), 4) for f in solve(hand))
    assert longest == LONGEST_SOLUTION_CHARS
    prompt = get_template("compact").prompt(["10"] * 4, "ood")
    tokens = build_tiny_tokenizer()(prompt)["input_ids"]
    assert len(tokens) == 1 + len(prompt)  # one token per character, plus BOS, as positions_needed counts
    cfg = default_config()
    assert positions_needed(cfg)["eval"][0] <= cfg["model"]["tiny"]["max_position_embeddings"]
