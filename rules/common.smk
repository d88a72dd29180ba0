# Wiring only: config validation, wildcard constraints, paths and input functions.

import json
import os
import re
import sys
from pathlib import Path

from sftrl.config import (
    ConfigError,
    band_name,
    format_layers,
    layer_range,
    layers_name,
    model_depth,
    replace_resource_groups,
    strip_tiny_only,
    sweep_variants,
    validate,
)
from sftrl.constants import RUN_ONLY
from sftrl.fingerprint import code_fingerprint
from sftrl.launch import gpu_count

# A resource group a study file sets replaces config.yaml's group whole (Snakemake merges key by key).
replace_resource_groups(config, workflow.config_settings.overwrite_config)
try:
    # the files too: a key given twice in one of them is lost in `config`
    validate(
        config,
        Path(workflow.basedir) / "config" / "schema.yaml",
        files=workflow.configfiles,
    )
except ConfigError as err:
    sys.exit(f"sftrl: {err}")
# A study of local weights never sees the tiny study's keys (config.yaml is always read first).
strip_tiny_only(config)

# envs/*.post-deploy.sh install this package into the rule environments (--sdm conda) from here.
os.environ.update(SFTRL_ROOT=workflow.basedir)


# Only the aggregate targets run in the Snakemake process itself. Every rule that does work, the
# cheap data and table rules included, is a cluster job under an executor such as SLURM: login
# nodes are often not meant for computation, and the data rules of a paper config write ~1M rows.
localrules:
    all,
    all_data,
    all_sft,
    all_rl,
    rl_sweep,
    all_eval,
    all_spectra,
    all_edits,
    all_plots,


STUDY = config["study"]
SPLITS = ["id", "ood"]
SFT_STEPS = sorted(config["sft"]["checkpoints"])
TINY = config["model"]["source"] == "tiny"
RL_ALGORITHM = config["rl"]["algorithm"]  # names the RL models: ppo-<step> or grpo-<step>
DEPTH = model_depth(config)  # decoder layers (model.path is checked above when local)


wildcard_constraints:
    step=r"\d+",
    start=r"\d+",
    split="id|ood",
    model=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    a=r"base|sft-\d+|(?:ppo|grpo)-\d+",
    b=r"base|sft-\d+|(?:ppo|grpo)-\d+",
    donor=r"base|sft-\d+|(?:ppo|grpo)-\d+",
    target=r"base|sft-\d+|(?:ppo|grpo)-\d+",
    method="uvmerge|sigmaswap|tripletswap|layerreset",
    variant="|".join(map(re.escape, sweep_variants(config))) or "(?!)",
    param=r"top[0-9.]+(-bottom[0-9.]+)?|layers[0-9.]+-[0-9.]+",


def R(path):
    """A path under this study's results directory."""
    return f"results/{STUDY}/{path}"


def res(group):
    """Resources of a rule group from config (`resources.default` overridden by the group).

    cpus_per_task and cpus_per_gpu exclude each other (the SLURM plugin takes cpus_per_task
    first, and a paper config's group inherits config.yaml's cpus_per_task): a job with GPUs
    keeps cpus_per_gpu when it has one, a job without keeps cpus_per_task. A job with several
    GPUs runs one process per GPU on its node (sftrl.launch), so it asks for one node.
    """
    merged = {**config["resources"]["default"], **config["resources"].get(group, {})}
    gpus = gpu_count(merged)
    if gpus and "cpus_per_gpu" in merged:
        merged.pop("cpus_per_task", None)
    elif not gpus:
        merged.pop("cpus_per_gpu", None)
    if gpus > 1:
        merged.setdefault("nodes", 1)
    return merged


def code(script, *modules):
    """A hash of the code a job runs (sftrl.fingerprint), the script in scripts/ with the sftrl
    modules it imports and ``modules`` (the trainer a launched job runs). A param of every rule
    that runs code, so an edit of that code reruns its jobs; a touched file does not."""
    return code_fingerprint(Path(workflow.basedir) / "scripts" / script, *modules)


def results_settings(section):
    """A config section without its run-only keys (RUN_ONLY: batch sizes for memory, state
    saving): what a job's results depend on. The scripts read the rest from the config.
    """
    return {k: v for k, v in config[section].items() if k not in RUN_ONLY[section]}


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
    return [f"{RL_ALGORITHM}-{s}" for s in rl_steps()]


def rl_hparams(wildcards=None):
    """The RL settings a run depends on (`rl.from` only chooses which runs exist, run-only keys
    change no result), the verifier's arithmetic (RL is scored as evaluation is); a sweep
    variant's overrides (`rl_sweep.variants`, by name) on top.
    """
    hp = {k: v for k, v in results_settings("rl").items() if k != "from"}
    hp["arithmetic"] = config["eval"]["arithmetic"]
    if wildcards is not None and "variant" in wildcards.keys():
        hp |= RL_VARIANTS[wildcards.variant]
    return hp


RL_SWEEP = config.get("rl_sweep") or {"from": []}
RL_VARIANTS = sweep_variants(config)  # name -> overrides of rl:


def rl_sweep_models():
    """The runs of the RL sweep (`snakemake rl_sweep`): <algorithm>-<step>-<variant>, plus the
    default runs from the same steps (the sweep table's `default` rows)."""
    steps = sorted(RL_SWEEP["from"])
    runs = [f"{RL_ALGORITHM}-{s}-{v}" for v in RL_VARIANTS for s in steps]
    return [f"{RL_ALGORITHM}-{s}" for s in steps if s in rl_steps()] + runs


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
        k: v
        for k, v in results_settings("sft").items()
        if k not in ("checkpoints", "keep_state")
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


def edit_models():
    """Every edited model of the config's sweeps (names as in DESIGN.md)."""
    e = config.get("edits")
    if not e:
        return []
    pair = f"{donor_model()}-into-{target_model()}"
    names = [f"uvmerge-{pair}-{band_name(t, b)}" for t, b in e["uv_merge"]]
    names += [f"sigmaswap-{pair}-{band_name(t, b)}" for t, b in e["sigma_swap"]]
    names += [f"tripletswap-{pair}-{band_name(t, b)}" for t, b in e["triplet_swap"]]
    names += [f"layerreset-{pair}-{layers_name(lo, hi)}" for lo, hi in e["layer_reset"]]
    if e["reverse"]:
        names += [f"uvmerge-sft-{s}-into-{RL_ALGORITHM}-{s}-top1" for s in rl_steps()]
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
        pairs += [(f"sft-{s}", f"{RL_ALGORITHM}-{s}") for s in rl_steps()]
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


def reset_layers():
    """Layer-reset name part (``layers0-0.25``) -> the decoder layers it resets in this model."""
    return {
        layers_name(lo, hi): layer_range(lo, hi, DEPTH)
        for lo, hi in config["edits"]["layer_reset"]
    }


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


# --- tables, plots and the report ---------------------------------------------------------


def moderate_model():
    """The stage table's "Moderate" checkpoint: a later SFT checkpoint that RL started from.

    Decision: the edits' target (`edits.target`, the last SFT checkpoint by default) when an RL
    run started from it, so the stage table, the edit tables and the spectra describe the same
    over-trained model; otherwise the last SFT checkpoint RL started from. None without RL.
    """
    starts = rl_steps()
    if not starts:
        return None
    target = target_model() if "edits" in config else None
    if target and target.startswith("sft-") and int(target.split("-")[1]) in starts:
        return target
    return f"sft-{starts[-1]}"


def moderate_rl_model():
    return moderate_model().replace("sft-", f"{RL_ALGORITHM}-")


def stage_inputs(wildcards):
    """peak-ood.json names Premax (a Snakemake checkpoint); Moderate and RL are known up front."""
    models = sorted({peak_model(), moderate_model(), moderate_rl_model()})
    return {
        "peak": R("eval/peak-ood.json"),
        "summaries": expand(R("eval/{model}/{split}.json"), model=models, split=SPLITS),
    }


def profile_pairs():
    """The pairs of the per-index spectrum plots: base → last SFT checkpoint (what SFT did),
    Premax → last SFT checkpoint (what SFT did past the OOD peak) and Moderate → its RL model
    (what RL did), each where `spectrum.pairs` computes it; all computed pairs if none is.
    """
    pairs = spectrum_pairs()
    last = f"sft-{SFT_STEPS[-1]}"
    wanted = [("base", last), (peak_model(), last)]
    if moderate_model():
        wanted.append((moderate_model(), moderate_rl_model()))
    chosen = [p for i, p in enumerate(wanted) if p in pairs and p not in wanted[:i]]
    return chosen or pairs


def stage_targets():
    return [R("tables/stages.md")] if moderate_model() else []


# name -> (report category, title). The order here is the order of the report's categories.
RESULTS = {
    "sft-trajectory": ("1. SFT and RL", "ID/OOD accuracy along SFT"),
    "rl-recovery": ("1. SFT and RL", "OOD recovery by PPO per starting checkpoint"),
    "stages": ("1. SFT and RL", "Stage table: Premax, Moderate, RL"),
    "spectrum": ("2. Spectra", "Spectral change by matrix type and band"),
    "sigma-change": ("2. Spectra", "Relative singular-value change by index"),
    "principal-angles": ("2. Spectra", "Principal angles by index"),
    "uv-merge": ("3. Edits", "UV merge, sigma swap and triplet swap"),
    "layer-reset": ("3. Edits", "Layer reset"),
    "benchmarks": ("4. Jobs", "Run time and peak memory of every job"),
}


def has_spectral_edits():
    e = config.get("edits")
    return bool(e and (e["uv_merge"] or e["sigma_swap"] or e["triplet_swap"]))


def has_layer_resets():
    e = config.get("edits")
    return bool(e and e["layer_reset"])


def plot_names():
    """The plots this config can draw (each needs the tables of its stage)."""
    names = ["sft-trajectory"]
    if rl_models():
        names += ["rl-recovery", "stages"]
    if "spectrum" in config:
        names += ["sigma-change", "principal-angles"]
    if has_spectral_edits():
        names.append("uv-merge")
    if has_layer_resets():
        names.append("layer-reset")
    return names


def report_table_names():
    names = ["sft-trajectory"]
    if rl_models():
        names += ["rl-recovery", "stages"]
    if "spectrum" in config:
        names.append("spectrum")
    if "edits" in config:
        names += ["uv-merge", "layer-reset"]
    return names + ["benchmarks"]


def plot_inputs(wildcards):
    """The tables (CSV) a plot is drawn from."""
    t = lambda name: R(f"tables/{name}.csv")
    return {
        "sft-trajectory": {"trajectory": t("sft-trajectory")}
        | ({"rl": t("rl-recovery")} if rl_models() else {}),
        "rl-recovery": {"rl": t("rl-recovery")},
        "stages": {"stages": t("stages")},
        "sigma-change": {"profile": t("spectrum-profile")},
        "principal-angles": {
            "profile": t("spectrum-profile"),
            "summary": t("spectrum"),
        },
        "uv-merge": {"uv": t("uv-merge")},
        "layer-reset": {"layers": t("layer-reset")},
    }[wildcards.plot]


def plot_targets():
    return expand(
        R("plots/{plot}.{ext}"), plot=plot_names(), ext=["html", "png", "svg"]
    )


def report_targets():
    return expand(R("report/tables/{table}.html"), table=report_table_names())
