# Wiring only: config validation, wildcard constraints, paths and input functions.

import json
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
    a=r"base|sft-\d+|ppo-\d+",
    b=r"base|sft-\d+|ppo-\d+",
    donor=r"base|sft-\d+|ppo-\d+",
    target=r"base|sft-\d+|ppo-\d+",
    method="uvmerge|sigmaswap|tripletswap|layerreset",
    param=r"top[0-9.]+(-bottom[0-9.]+)?|layers[0-9]+(-[0-9]+)?",


def R(path):
    """A path under this study's results directory."""
    return f"results/{STUDY}/{path}"


def res(group):
    """Resources of a rule group from config (`resources.default` overridden by the group)."""
    return {**config["resources"]["default"], **config["resources"].get(group, {})}


def holdout():
    """(fraction, seed) of the held-out rank multisets, shared by every data set."""
    d = config["data"]
    return [d.get("holdout_fraction", 0.0), d.get("holdout_seed", 0)]


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


# --- spectra and edits ---------------------------------------------------------------------

def peak_model():
    """The SFT checkpoint with the highest OOD accuracy (a Snakemake checkpoint: known once the
    SFT checkpoints are evaluated)."""
    with open(checkpoints.peak_ood.get().output[0]) as fh:
        return json.load(fh)["model"]


def donor_model():
    donor = config["edits"]["donor"]
    return peak_model() if donor == "best-ood" else donor


def target_model():
    target = config["edits"]["target"]
    return f"sft-{SFT_STEPS[-1]}" if target == "last" else target


def band_param(top, bottom):
    """`top0.2`, `top0.1-bottom0.1`: the name part of a spectral edit's fractions."""
    return f"top{top:g}" + (f"-bottom{bottom:g}" if bottom else "")


def edit_models():
    """Every edited model of the config's sweeps (names as in DESIGN.md)."""
    e = config.get("edits")
    if not e:
        return []
    pair = f"{donor_model()}-into-{target_model()}"
    names = [f"uvmerge-{pair}-{band_param(t, b)}" for t, b in e["uv_merge"]]
    names += [f"sigmaswap-{pair}-{band_param(t, b)}" for t, b in e["sigma_swap"]]
    names += [f"tripletswap-{pair}-{band_param(t, b)}" for t, b in e["triplet_swap"]]
    names += [f"layerreset-{pair}-layers{spec}" for spec in e["layer_reset"]]
    if e["reverse"]:
        names += [f"uvmerge-sft-{s}-into-ppo-{s}-top1" for s in rl_steps()]
    return names


def spectrum_pairs():
    """(reference, compared) model pairs of the spectral comparisons in `spectrum.pairs`."""
    kinds = config["spectrum"]["pairs"] if "spectrum" in config else []
    pairs = []
    if "base-to-sft" in kinds:
        pairs += [("base", m) for m in sft_models()]
    if "peak-to-later" in kinds:
        peak = peak_model()
        pairs += [(peak, f"sft-{s}") for s in SFT_STEPS if s > int(peak.split("-")[1])]
    if "sft-to-rl" in kinds:
        pairs += [(f"sft-{s}", f"ppo-{s}") for s in rl_steps()]
    return pairs


def spectrum_targets(wildcards=None):
    if "spectrum" not in config:
        return []
    return [R(f"spectrum/{a}--{b}.parquet") for a, b in spectrum_pairs()]


def edit_eval_targets(wildcards=None):
    return expand(R("eval/{model}/{split}.json"), model=edit_models(), split=SPLITS)


def svd_inputs(wildcards):
    """An SVD file with factors is all a comparison needs; without factors the checkpoints are
    decomposed again (paper scale), so they are inputs too."""
    inputs = {
        "a": R(f"svd/{wildcards.a}.safetensors"),
        "b": R(f"svd/{wildcards.b}.safetensors"),
    }
    if not config["spectrum"]["factors"]:
        inputs |= {
            "model_a": R(f"models/{wildcards.a}"),
            "model_b": R(f"models/{wildcards.b}"),
        }
    return inputs


def edit_inputs(wildcards):
    inputs = {
        "target": R(f"models/{wildcards.target}"),
        "donor": R(f"models/{wildcards.donor}"),
    }
    if wildcards.method != "layerreset" and config["spectrum"]["factors"]:
        inputs |= {
            "svd_target": R(f"svd/{wildcards.target}.safetensors"),
            "svd_donor": R(f"svd/{wildcards.donor}.safetensors"),
        }
    return inputs


def edited(path):
    """Edited models are deleted once evaluated, unless `edits.keep`."""
    return path if config["edits"]["keep"] else temp(path)


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


def table_targets():
    tables = [R("tables/sft-trajectory.md")]
    if rl_models():
        tables.append(R("tables/rl-recovery.md"))
    if "spectrum" in config:
        tables.append(R("tables/spectrum.md"))
    if "edits" in config:
        tables += [R("tables/uv-merge.md"), R("tables/layer-reset.md")]
    return tables
