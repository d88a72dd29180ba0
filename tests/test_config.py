"""Config validation: the default config and the schema agree; bad keys fail with their name."""

import copy
import re
from pathlib import Path

import pytest
import yaml

from sftrl.config import ConfigError, load, validate

from conftest import ROOT, default_config


def test_default_config_is_valid():
    validate(default_config())


def test_every_key_of_the_default_config_is_commented():
    # config.yaml is documentation: each key line carries a comment, or a comment line above it.
    lines = (ROOT / "config.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or ":" not in stripped:
            continue
        above = lines[i - 1].strip() if i else ""
        assert "#" in line or above.startswith("#"), f"config.yaml line {i + 1} has no comment: {line!r}"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        # a misspelt key is named with its path
        (lambda c: c["data"].__setitem__("sft_sze", 10), "data.sft_sze"),
        # an unknown top-level key
        (lambda c: c.__setitem__("sfft", {}), "unknown key sfft"),
        # a wrong type names the key and the expected type
        (lambda c: c["sft"].__setitem__("lr", "fast"), "sft.lr: 'fast' is not of type 'number'"),
        # a missing required key
        (lambda c: c["eval"].pop("turns"), "missing required key eval.turns"),
        # an enum value out of range
        (lambda c: c["model"].__setitem__("template", "chat"), "model.template"),
        # cross-field: a checkpoint past the schedule
        (lambda c: c["sft"].__setitem__("checkpoints", [10, 5000]), "sft.checkpoints: step 5000"),
        # cross-field: local source without a path
        (lambda c: c["model"].update(source="local", path=None), "model.path"),
        # cross-field: global batch not a multiple of the device batch
        (lambda c: c["sft"].update(batch_size=64, per_device_batch_size=48), "sft.batch_size"),
        # threads: a number or the one word
        (
            lambda c: c.__setitem__("threads", "cpu"),
            "threads: 'cpu' is not allowed here: expected an integer (at least 1 and at most 1024) or 'cpus'",
        ),
    ],
)
def test_bad_configs_name_the_key(mutate, expected):
    cfg = copy.deepcopy(default_config())
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert expected in str(err.value)


def test_load_reports_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.yaml")


def test_load_rejects_non_mapping(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="mapping"):
        load(p)


def test_rl_sweep_variants_are_checked_like_rl():
    from sftrl.config import sweep_variants

    cfg = default_config()
    assert sweep_variants(cfg)["lr1e-4"] == {"lr": 1.0e-4, "lr_min": 1.0e-5}
    for variants, key in [
        ([{"name": "a", "lr": -1.0}], "rl_sweep.variants.a"),  # PPOConfig's own check
        ([{"name": "a", "from": [5]}], "rl_sweep.variants.a"),  # not an RL setting
        ([{"name": "a"}, {"name": "a", "turns": 1}], "rl_sweep.variants"),  # one name, two runs
        ([{"name": "../x"}], "rl_sweep.variants[0].name"),
    ]:
        bad = {**cfg, "rl_sweep": {"from": [50], "variants": variants}}
        with pytest.raises(ConfigError, match=re.escape(key)):
            validate(bad)
    with pytest.raises(ConfigError, match=r"rl_sweep.from: steps \[7\]"):
        validate({**cfg, "rl_sweep": {"from": [7], "variants": []}})
