"""Validation of a study's configuration: JSON Schema first, then cross-field checks.

Every error names the key (dotted path) and says what was expected, so a misspelt or
mistyped key fails before any job runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator

SCHEMA = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


class ConfigError(ValueError):
    """An invalid configuration; the message names the key."""


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _describe(error) -> str:
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        where = _key(error.absolute_path)
        names = ", ".join(f"{where}.{k}" if error.absolute_path else k for k in extra)
        return f"unknown key {names}; allowed here: {', '.join(allowed)}"
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        where = _key(error.absolute_path)
        names = ", ".join(f"{where}.{k}" if error.absolute_path else k for k in missing)
        return f"missing required key {names}"
    return f"{_key(error.absolute_path)}: {error.message}"


def validate(config: dict, schema_path: str | os.PathLike = SCHEMA) -> dict:
    """Raise :class:`ConfigError` listing every problem; return ``config`` unchanged if valid."""
    with open(schema_path) as fh:
        schema = yaml.safe_load(fh)
    errors = sorted(Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    problems = [_describe(e) for e in errors]
    if not problems:
        problems = _cross_checks(config)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
    return config


def _cross_checks(cfg: dict) -> list[str]:
    problems = []
    model, sft = cfg["model"], cfg["sft"]
    if model["source"] == "local" and not model.get("path"):
        problems.append("model.path: required when model.source is 'local' (a checkpoint directory)")
    if model["source"] == "tiny":
        if "tiny" not in model:
            problems.append("model.tiny: required when model.source is 'tiny' (its architecture)")
        if "base" not in cfg:
            problems.append("base: required when model.source is 'tiny' (pretraining of the tiny base)")
        if "pretrain_size" not in cfg["data"]:
            problems.append("data.pretrain_size: required when model.source is 'tiny'")
        if model["template"] != "compact":
            problems.append("model.template: the tiny model's character tokenizer needs 'compact'")
    if max(sft["checkpoints"]) > sft["max_steps"]:
        problems.append(
            f"sft.checkpoints: step {max(sft['checkpoints'])} is past sft.max_steps "
            f"({sft['max_steps']}); raise sft.max_steps or drop the step"
        )
    if sft["batch_size"] % sft["per_device_batch_size"]:
        problems.append(
            f"sft.batch_size ({sft['batch_size']}) must be a multiple of sft.per_device_batch_size "
            f"({sft['per_device_batch_size']})"
        )
    rl = cfg.get("rl")
    if rl and rl.get("from"):
        unknown = sorted(set(rl["from"]) - set(sft["checkpoints"]))
        if unknown:
            problems.append(f"rl.from: steps {unknown} are not in sft.checkpoints {sorted(sft['checkpoints'])}")
    if rl:
        from sftrl.ppo import PPOConfig

        try:
            PPOConfig.from_dict({k: v for k, v in rl.items() if k not in ("algorithm", "from", "num_generations")})
        except ValueError as err:
            problems.append(f"rl: {err}")
    return problems


def load(path: str | os.PathLike) -> dict:
    """Read and validate a YAML config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    with open(path) as fh:
        cfg = yaml.safe_load(fh)
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return validate(cfg)
