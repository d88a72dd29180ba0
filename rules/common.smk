# Wiring only: the config checked and made effective, wildcard constraints, paths, resources and
# input functions. The study's decisions (names, pairs, stages, the registry of results) are
# sftrl.study's, unit-tested in tests/test_study.py.

import json
import os
import re
import sys
from pathlib import Path

from sftrl import study
from sftrl.config import ConfigError, model_depth, prepare
from sftrl.constants import RUN_ONLY
from sftrl.fingerprint import code_fingerprint
from sftrl.launch import job_resources, job_threads

try:  # the effective config: resource groups whole, checked, no tiny-only keys for local weights
    schema = Path(workflow.basedir) / "config" / "schema.yaml"
    overrides = workflow.config_settings.overwrite_config
    prepare(config, overrides, files=workflow.configfiles, schema_path=schema)
except ConfigError as err:
    sys.exit(f"sftrl: {err}")
# envs/*.post-deploy.sh install this package into the rule environments (--sdm conda) from here.
os.environ.update(SFTRL_ROOT=workflow.basedir)


STUDY = config["study"]
SPLITS = list(study.SPLITS)
SFT_STEPS = study.sft_steps(config)
DATA_SETS = study.data_sets(config)
RL_ALGORITHM = study.rl_algorithm(config)  # RL models: ppo-<start> or grpo-<start>
RL_VARIANTS = study.sweep_variants(config)  # name -> overrides of rl:
DEPTH = model_depth(config)  # decoder layers (model.path is checked above when local)


wildcard_constraints:
    step=r"\d+",
    start=r"\d+",
    split="id|ood",
    model=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    a=study.MODEL,
    b=study.MODEL,
    donor=study.MODEL,
    target=study.MODEL,
    method="|".join(study.EDIT_METHODS),
    variant="|".join(map(re.escape, RL_VARIANTS)) or "(?!)",
    param=study.EDIT_PARAM,


def R(path):
    """A path under this study's results directory."""
    return f"results/{STUDY}/{path}"


def res(group):
    """Resources of a rule group (sftrl.launch.job_resources)."""
    return job_resources(config["resources"], group)


def cpu_threads(group):
    """CPU threads of a rule group's jobs (`threads` in the config; sftrl.launch.job_threads)."""
    return job_threads(config["threads"], config["resources"], group)


def code(script, *modules):
    """A hash of the code a job runs (sftrl.fingerprint): the script with the sftrl modules it
    imports, and ``modules``. A param of each rule running code, so editing that code reruns
    its jobs; touching a file does not."""
    return code_fingerprint(Path(workflow.basedir) / "scripts" / script, *modules)


def results_settings(section, settings=None):
    """A section's settings without its run-only keys (RUN_ONLY: batch sizes for memory, state
    saving): what a job's results depend on. The scripts read the rest from the config.
    """
    settings = config[section] if settings is None else settings
    return {k: v for k, v in settings.items() if k not in RUN_ONLY[section]}


def holdout():
    """(fraction, seed) of the held-out rank multisets, shared by every data set."""
    d = config["data"]
    return [d.get("holdout_fraction", 0.0), d.get("holdout_seed", 0)]  # optional keys


# --- models ----------------------------------------------------------------------------------


def rl_hparams(wildcards):
    """What an RL run's results depend on (sftrl.study.rl_hparams, run-only keys left out)."""
    return results_settings("rl", study.rl_hparams(config, wildcards.get("variant")))


def sft_hparams():
    """What an SFT segment depends on: not the checkpoint list (adding a checkpoint must not
    rerun the segments that exist) nor keep_state."""
    hp = results_settings("sft")
    return {k: v for k, v in hp.items() if k not in ("checkpoints", "keep_state")}


def previous_state(wildcards):
    """An SFT segment resumes from the training state of the previous configured step."""
    earlier = [s for s in SFT_STEPS if s < int(wildcards.step)]
    return {"state": R(f"train/sft/state-{max(earlier)}")} if earlier else {}


def base_inputs(wildcards):
    return {"data": R("data/pretrain.parquet")} if "pretrain" in DATA_SETS else {}


# --- what the peak-OOD checkpoint decides (a Snakemake checkpoint) ---------------------------


def peak_model():
    """The SFT checkpoint with the highest OOD accuracy, once the SFT checkpoints are evaluated."""
    with open(checkpoints.peak_ood.get().output[0]) as fh:
        return json.load(fh)["model"]


def spectrum_targets(wildcards=None):
    pairs = study.spectrum_pairs(config, peak_model)
    return [R(f"spectrum/{a}--{b}.parquet") for a, b in pairs]


def edit_eval_targets(wildcards=None):
    models = [e.name for e in study.edits(config, peak_model)]
    return expand(R("eval/{model}/{split}.json"), model=models, split=SPLITS)


def svd_inputs(wildcards):
    """A comparison reads SVD files with factors (spectrum.factors), else the checkpoints
    themselves, which it decomposes (paper scale: no factors on disk)."""
    a, b = wildcards.a, wildcards.b
    if config["spectrum"]["factors"]:
        return {"a": R(f"svd/{a}.safetensors"), "b": R(f"svd/{b}.safetensors")}
    return {"a": R(f"models/{a}"), "b": R(f"models/{b}")}


def edit_inputs(wildcards):
    donor, target = wildcards.donor, wildcards.target
    inputs = {"target": R(f"models/{target}"), "donor": R(f"models/{donor}")}
    if wildcards.method != "layerreset" and config["spectrum"]["factors"]:
        inputs["svd_target"] = R(f"svd/{target}.safetensors")
        inputs["svd_donor"] = R(f"svd/{donor}.safetensors")
    return inputs


# An edit job edits and evaluates: the edited model is written to a work directory, played on the
# evaluation hands and deleted, unless `edits.keep` makes it an output (models/<edited>/).
EDITED = "{method}-{donor}-into-{target}-{param}"


def edited_model():
    """The edit rule's model output: models/<edited> when `edits.keep`, else none."""
    if not config["edits"]["keep"]:
        return {}
    return {"model": directory(R(f"models/{EDITED}"))}


def stage_inputs(wildcards):
    """The summaries of Premax (named by peak-ood.json), Moderate and RL."""
    models = sorted(set(study.stage_models(config, peak_model).values()))
    summaries = expand(R("eval/{model}/{split}.json"), model=models, split=SPLITS)
    return {"peak": R("eval/peak-ood.json"), "summaries": summaries}


def plot_inputs(wildcards):
    """The tables (CSV) a plot is drawn from."""
    tables = study.plot_tables(config, wildcards.plot)
    return {key: R(f"tables/{name}.csv") for key, name in tables.items()}


# --- targets (from the registry of results, sftrl.study.RESULTS) ----------------------------


def eval_targets():
    models = study.study_models(config)
    return expand(R("eval/{model}/{split}.json"), model=models, split=SPLITS)


def table_targets():
    """The result tables (not the job records, which are made from every result)."""
    names = [n for n in study.table_names(config) if n != "benchmarks"]
    return [R(f"{study.RESULT[n].path}.md") for n in names]


def plot_targets():
    plots = study.plot_names(config)
    return expand(R("plots/{plot}.{ext}"), plot=plots, ext=["html", "png", "svg"])


def report_targets():
    pages = study.table_names(config)
    return expand(R("report/tables/{table}.html"), table=pages)
