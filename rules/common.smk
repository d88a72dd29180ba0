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
# replicates: results/<study>/seed-<n>/ holds each one's models, evaluations and tables
SEEDS = study.seeds(config)
SHARED_BASE = study.shared_base(config)  # local weights: one base for every replicate
SPLITS = list(study.SPLITS)
SFT_STEPS = study.sft_steps(config)
DATA_SETS = study.data_sets(config)
RL_ALGORITHM = study.rl_algorithm(config)  # RL models: ppo-<start> or grpo-<start>
RL_VARIANTS = study.sweep_variants(config)  # name -> overrides of rl:
DEPTH = model_depth(config)  # decoder layers (model.path is checked above when local)


wildcard_constraints:
    seed=r"\d+",
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


# --- paths: what the replicates share (results/<study>/) and what each has (seed-<n>/) ----------


def R(path):
    """A path under this study's results directory: what every replicate shares (the data, the
    tables and plots across seeds, the report; a local base model)."""
    return f"results/{STUDY}/{path}"


def S(path):
    """A path of one replicate, results/<study>/seed-{seed}/<path>, the seed a wildcard."""
    return R(f"seed-{{seed}}/{path}")


def at_seed(seed, path):
    """A path of replicate ``seed``: its models, evaluations, spectra, logs and tables."""
    return R(f"seed-{seed}/{path}")


# The base's files (model, log, record, evaluation, SVD): shared by every replicate for local
# weights, one per replicate for the tiny base (its initialisation and data order are seeded).
BASE = R if SHARED_BASE else S


def model_dir(model, seed):
    """The checkpoint directory of ``model`` in replicate ``seed``."""
    if model == "base" and SHARED_BASE:
        return R("models/base")
    return at_seed(seed, f"models/{model}")


def eval_file(model, split, seed):
    """The evaluation summary of ``model`` on ``split`` in replicate ``seed``."""
    if model == "base" and SHARED_BASE:
        return R(f"eval/base/{split}.json")
    return at_seed(seed, f"eval/{model}/{split}.json")


def evals(models, seed, splits=SPLITS):
    """The evaluation summaries of ``models`` (each split) in replicate ``seed``."""
    return [eval_file(m, sp, seed) for m in models for sp in splits]


def svd_file(model, seed):
    if model == "base" and SHARED_BASE:
        return R("svd/base.safetensors")
    return at_seed(seed, f"svd/{model}.safetensors")


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


def base_model_settings(wildcards):
    """The model section as the base job runs it, with the replicate's initialisation seed."""
    model = dict(config["model"])
    if "tiny" in model:
        model["tiny"] = study.replicate(model["tiny"], wildcards.get("seed", 0))
    return model


def base_train_settings(wildcards):
    """base: (the tiny base's pretraining) with the replicate's data-order seed; None for local."""
    return study.replicate(config.get("base"), wildcards.get("seed", 0))


def rl_hparams(wildcards):
    """What an RL run's results depend on (sftrl.study.rl_hparams, run-only keys left out), with
    the replicate's seed."""
    hp = study.rl_hparams(config, wildcards.get("variant"))
    return results_settings("rl", study.replicate(hp, wildcards.seed))


def sft_hparams(wildcards):
    """What an SFT segment depends on: not the checkpoint list (adding a checkpoint must not
    rerun the segments that exist) nor keep_state; the replicate's seed."""
    hp = study.replicate(results_settings("sft"), wildcards.seed)
    return {k: v for k, v in hp.items() if k not in ("checkpoints", "keep_state")}


def sft_inputs(wildcards):
    """The base, and the training state of the previous configured step to resume from."""
    earlier = [s for s in SFT_STEPS if s < int(wildcards.step)]
    state = (
        {"state": at_seed(wildcards.seed, f"train/sft/state-{max(earlier)}")}
        if earlier
        else {}
    )
    return {"base": model_dir("base", wildcards.seed), **state}


def base_inputs(wildcards):
    return {"data": R("data/pretrain.parquet")} if "pretrain" in DATA_SETS else {}


# --- what the peak-OOD checkpoint decides (a Snakemake checkpoint per replicate) ---------------


def peak_model(seed):
    """The SFT checkpoint of replicate ``seed`` with the highest OOD accuracy, once its SFT
    checkpoints are evaluated."""
    with open(checkpoints.peak_ood.get(seed=str(seed)).output[0]) as fh:
        return json.load(fh)["model"]


def peak_of(seed):
    """peak_model(seed) as sftrl.study asks for it (a function called only where it matters)."""
    return lambda: peak_model(seed)


def seed_spectrum_targets(seed):
    pairs = study.spectrum_pairs(config, peak_of(seed))
    return [at_seed(seed, f"spectrum/{a}--{b}.parquet") for a, b in pairs]


def spectrum_targets(wildcards=None):
    return [path for seed in SEEDS for path in seed_spectrum_targets(seed)]


def seed_edit_targets(seed):
    models = [e.name for e in study.edits(config, peak_of(seed))]
    return [at_seed(seed, f"eval/{m}/{split}.json") for m in models for split in SPLITS]


def edit_eval_targets(wildcards=None):
    return [path for seed in SEEDS for path in seed_edit_targets(seed)]


def svd_inputs(wildcards):
    """A comparison reads SVD files with factors (spectrum.factors), else the checkpoints
    themselves, which it decomposes (paper scale: no factors on disk)."""
    a, b, seed = wildcards.a, wildcards.b, wildcards.seed
    if config["spectrum"]["factors"]:
        return {"a": svd_file(a, seed), "b": svd_file(b, seed)}
    return {"a": model_dir(a, seed), "b": model_dir(b, seed)}


def edit_inputs(wildcards):
    donor, target, seed = wildcards.donor, wildcards.target, wildcards.seed
    inputs = {"target": model_dir(target, seed), "donor": model_dir(donor, seed)}
    if wildcards.method != "layerreset" and config["spectrum"]["factors"]:
        inputs["svd_target"] = svd_file(target, seed)
        inputs["svd_donor"] = svd_file(donor, seed)
    return inputs


# An edit job edits and evaluates: the edited model is written to a work directory, played on the
# evaluation hands and deleted, unless `edits.keep` makes it an output (models/<edited>/).
EDITED = "{method}-{donor}-into-{target}-{param}"


def edited_model():
    """The edit rule's model output: models/<edited> when `edits.keep`, else none."""
    if not config["edits"]["keep"]:
        return {}
    return {"model": directory(S(f"models/{EDITED}"))}


def stage_inputs(wildcards):
    """The summaries of Premax (named by peak-ood.json), Moderate and RL."""
    models = sorted(set(study.stage_models(config, peak_of(wildcards.seed)).values()))
    return {
        "peak": at_seed(wildcards.seed, "eval/peak-ood.json"),
        "summaries": evals(models, wildcards.seed),
    }


def plot_inputs(wildcards):
    """The tables (CSV, across seeds) a plot is drawn from."""
    tables = study.plot_tables(config, wildcards.plot)
    return {key: R(f"tables/{name}.csv") for key, name in tables.items()}


def seed_tables(wildcards):
    """Each replicate's table that tables/<table>.csv combines, named seed<n>."""
    path = study.SEEDED_RESULT[wildcards.table].path
    return {f"seed{seed}": at_seed(seed, f"{path}.csv") for seed in SEEDS}


def findings_inputs(wildcards):
    """Every replicate's tables the findings are measured from, named <table>_seed<n>."""
    names = [n for n in study.table_names(config) if study.RESULT[n].keys]
    return {
        f"{name.replace('-', '_')}_seed{seed}": at_seed(seed, f"tables/{name}.csv")
        for name in names
        for seed in SEEDS
    }


# --- targets (from the registry of results, sftrl.study.RESULTS) ----------------------------


def eval_targets():
    models = study.study_models(config)
    return list(dict.fromkeys(path for seed in SEEDS for path in evals(models, seed)))


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
