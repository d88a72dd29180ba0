# Wiring only: config validation, wildcard constraints, paths and input functions.

import sys
from pathlib import Path

from sftrl.config import ConfigError, validate

try:
    validate(config, Path(workflow.basedir) / "config" / "schema.yaml")
except ConfigError as err:
    sys.exit(f"sftrl: {err}")

STUDY = config["study"]
SPLITS = ["id", "ood"]
SFT_STEPS = sorted(config["sft"]["checkpoints"])
TINY = config["model"]["source"] == "tiny"


wildcard_constraints:
    step=r"\d+",
    split="id|ood",
    model=r"[A-Za-z0-9][A-Za-z0-9._-]*",


def R(path):
    """A path under this study's results directory."""
    return f"results/{STUDY}/{path}"


def res(group):
    """Resources of a rule group from config (`resources.default` overridden by the group)."""
    return {**config["resources"]["default"], **config["resources"].get(group, {})}


def sft_models():
    return [f"sft-{s}" for s in SFT_STEPS]


def rl_steps():
    """SFT steps that RL starts from (`rl.from`, default every SFT checkpoint)."""
    return sorted(config["rl"]["from"] or SFT_STEPS) if "rl" in config else []


def rl_models():
    return [f"ppo-{s}" for s in rl_steps()]


def rl_hparams():
    """The RL settings a run depends on (`rl.from` only chooses which runs exist)."""
    return {k: v for k, v in config["rl"].items() if k != "from"}


def trajectory_models():
    """The models of the SFT trajectory: the base (step 0) and every SFT checkpoint."""
    return ["base"] + sft_models()


def previous_state(wildcards):
    """An SFT segment resumes from the training state of the previous configured step."""
    step = int(wildcards.step)
    earlier = [s for s in SFT_STEPS if s < step]
    return {"state": R(f"train/sft/state-{max(earlier)}")} if earlier else {}


def base_inputs(wildcards):
    return {"data": R("data/pretrain.parquet")} if TINY else {}


def sft_hparams():
    """The SFT settings a segment depends on. The checkpoint list is left out on purpose: adding
    a checkpoint must not re-run the segments that already exist."""
    return {
        k: v for k, v in config["sft"].items() if k not in ("checkpoints", "keep_state")
    }


def data_targets():
    files = [
        R("data/sft.parquet"),
        R("data/rl.parquet"),
        *expand(R("data/eval-{split}.parquet"), split=SPLITS),
    ]
    return files + ([R("data/pretrain.parquet")] if TINY else [])


def eval_targets():
    models = trajectory_models() + rl_models()
    return expand(R("eval/{model}/{split}.json"), model=models, split=SPLITS)


def final_targets():
    tables = [R("tables/sft-trajectory.md")]
    if rl_models():
        tables.append(R("tables/rl-recovery.md"))
    return [*data_targets(), *eval_targets(), *tables]
