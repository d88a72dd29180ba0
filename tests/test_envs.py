"""Software environments (envs/*.yaml, for `snakemake --sdm conda`): every rule that runs code
names one, and their packages agree with pyproject.toml."""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from conftest import ROOT

ENVS = ROOT / "envs"
# pyproject dependencies that only the Snakemake process itself needs (the driver: it validates
# the config and submits jobs); no rule imports them, which test_driver_only_packages checks.
DRIVER_ONLY = {"snakemake", "snakemake-executor-plugin-slurm"}
# Build tools the post-deploy script needs for `pip install --no-build-isolation -e`.
BUILD = {"pip", "setuptools", "wheel"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"]


def project_requirements() -> dict[str, Requirement]:
    # the runtime dependencies and the extras of the training env (DeepSpeed for GPU nodes,
    # TensorBoard for logging.report_to)
    extras = pyproject()["optional-dependencies"]
    reqs = [Requirement(r) for r in pyproject()["dependencies"] + extras["deepspeed"] + extras["tensorboard"]]
    return {canonical(r.name): r for r in reqs}


def conda_spec(spec: str) -> tuple[str, SpecifierSet]:
    """`python >=3.11,<3.14` -> ("python", SpecifierSet(">=3.11,<3.14"))."""
    name, _, version = spec.strip().partition(" ")
    return canonical(name), SpecifierSet(version.replace(" ", ""))


def read_env(name: str) -> tuple[dict[str, SpecifierSet], dict[str, Requirement]]:
    """(conda packages, pip requirements) of envs/<name>.yaml."""
    env = yaml.safe_load((ENVS / f"{name}.yaml").read_text())
    assert env["channels"][0] == "conda-forge", f"envs/{name}.yaml: conda-forge first"
    conda, pip = {}, {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            assert set(dep) == {"pip"}, f"envs/{name}.yaml: unexpected {dep}"
            for line in dep["pip"]:
                req = Requirement(line)
                pip[canonical(req.name)] = req
        else:
            name_, spec = conda_spec(dep)
            conda[name_] = spec
    return conda, pip


def env_names() -> list[str]:
    return sorted(p.stem for p in ENVS.glob("*.yaml"))  # not the pin files (*.linux-64.pin.txt)


# `use rule a as b with:`, at the top level or indented inside an `if` (group 1: the indent)
USE_RULE = re.compile(r"(?m)^( *)use rule (\w+) as (\w+) with:\n")


def rule_blocks() -> dict[str, str]:
    """Every rule and checkpoint of the workflow (Snakefile and rules/*.smk): name -> its text."""
    blocks = {}
    for path in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        text = path.read_text()
        starts = list(re.finditer(r"(?m)^(?:rule|checkpoint) (\w+):\n", text))
        for i, m in enumerate(starts):
            end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
            # a block ends where the next unindented line starts
            body = re.split(r"(?m)^(?=\S)", text[m.end() : end])[0]
            blocks[m.group(1)] = (path, body)
        # `use rule a as b with:` -- b runs a's code in a's environment
        for m in USE_RULE.finditer(text):
            blocks[m.group(3)] = blocks[m.group(2)]
    return blocks


def directive(body: str, name: str) -> str | None:
    """The quoted value of `name:` on the next line (snakefmt layout), e.g. script: "../x.py"."""
    m = re.search(rf'(?m)^    {name}:\n\s+"([^"]+)"', body)
    return m.group(1) if m else None


def test_every_rule_is_parsed():
    """The text parser above sees the same rules as Snakemake does."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--list-rules",
            "--workflow-profile",
            "none",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    listed = set(proc.stdout.split())
    # rules defined inside an `if` (the shared base of local weights: evaluate_base, svd_base) exist
    # only for such a config; the paper dry-runs (test_slurm, test_study_configs) plan them
    conditional = {
        m.group(3)
        for path in [ROOT / "Snakefile", *(ROOT / "rules").glob("*.smk")]
        for m in USE_RULE.finditer(path.read_text())
        if m.group(1)
    }
    assert conditional == {"evaluate_base", "svd_base"}
    assert listed == set(rule_blocks()) - conditional, f"snakemake --list-rules: {sorted(listed)}"


def test_every_rule_that_runs_code_has_an_existing_conda_env():
    missing, broken = [], []
    for rule, (path, body) in rule_blocks().items():
        if not re.search(r"(?m)^    (script|shell|run|notebook|wrapper):", body):
            continue  # an aggregate target: nothing runs
        env = directive(body, "conda")
        if env is None:
            missing.append(f"{rule} ({path.name})")
        elif not (path.parent / env).resolve().is_file() or (path.parent / env).resolve().parent != ENVS:
            broken.append(f"{rule}: {env}")
    assert not missing, f"rules without a conda: directive: {missing}"
    assert not broken, f"conda: directives not naming a file in envs/: {broken}"


def test_env_files_and_post_deploy_scripts():
    assert env_names() == ["analysis", "plotting", "training"]
    requires_python = SpecifierSet(pyproject()["requires-python"])
    for name in env_names():
        conda, pip = read_env(name)
        assert BUILD <= set(conda), f"envs/{name}.yaml needs {BUILD - set(conda)}"
        # the same lower bound of Python as pyproject, and nothing below it allowed
        lower = {s.version for s in conda["python"] if s.operator == ">="}
        assert lower == {s.version for s in requires_python if s.operator == ">="}, name
        assert "sftrl" not in pip, f"envs/{name}.yaml: sftrl is installed by the post-deploy script"
        script = ENVS / f"{name}.post-deploy.sh"
        assert script.is_file(), f"{script} missing: sftrl would not be importable in the env"
        assert 'exec bash "$SFTRL_ROOT/envs/install-sftrl.sh" "$0"' in script.read_text()
    text = (ENVS / "install-sftrl.sh").read_text()
    assert "--no-deps" in text and '"$SFTRL_ROOT"' in text and "--editable" in text
    assert "SFTRL_ROOT=workflow.basedir" in (ROOT / "rules" / "common.smk").read_text()


def test_env_packages_have_the_pyproject_ranges():
    project = project_requirements()
    wrong = []
    for name in env_names():
        conda, pip = read_env(name)
        for dist, req in pip.items():
            if dist not in project:
                wrong.append(f"envs/{name}.yaml: {dist} is not a dependency in pyproject.toml")
            elif req.specifier != project[dist].specifier:
                wrong.append(f"envs/{name}.yaml: {req} but pyproject.toml says {project[dist]}")
        for dist, spec in conda.items():
            if dist in project and spec != project[dist].specifier:
                wrong.append(f"envs/{name}.yaml: {dist} {spec} but pyproject.toml says {project[dist]}")
    assert not wrong, "\n".join(wrong)


def test_every_pyproject_dependency_is_in_an_env_or_driver_only():
    in_envs = set()
    for name in env_names():
        conda, pip = read_env(name)
        in_envs |= set(conda) | set(pip)
    left = set(project_requirements()) - in_envs - DRIVER_ONLY
    assert not left, f"pyproject dependencies in no envs/*.yaml: {sorted(left)}"


def script_imports(script: Path) -> list[str]:
    """Modules a rule script imports at its top level (`from sftrl import data` -> sftrl.data)."""
    mods = []
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Import):
            mods += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            mods.append(node.module)
            mods += [f"{node.module}.{a.name}" for a in node.names]
    return mods


IMPORTED_DISTRIBUTIONS = """
import importlib, importlib.metadata as md, json, sys
before = set(sys.modules)
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:  # `from pkg import function` tried as a module: fine; others are not
            raise
dists = md.packages_distributions()
print(json.dumps(sorted({d for m in set(sys.modules) - before for d in dists.get(m.split(".")[0], [])})))
"""


def imported_distributions(modules: list[str]) -> set[str]:
    """The installed distributions that importing ``modules`` loads (in a fresh interpreter)."""
    proc = subprocess.run(
        [sys.executable, "-c", IMPORTED_DISTRIBUTIONS, *modules], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    return {canonical(d) for d in json.loads(proc.stdout.strip().splitlines()[-1])}


@pytest.fixture(scope="module")
def env_imports() -> dict[str, set[str]]:
    """Per env: the pyproject dependencies that its rules' scripts load when they start."""
    project = set(project_requirements())
    modules: dict[str, set[str]] = {}
    for _rule, (path, body) in rule_blocks().items():
        env, script = directive(body, "conda"), directive(body, "script")
        if env and script:
            mods = script_imports((path.parent / script).resolve())
            modules.setdefault(Path(env).stem, set()).update(mods)
    return {env: imported_distributions(sorted(mods)) & project for env, mods in modules.items()}


def test_every_env_holds_what_its_rules_import(env_imports):
    assert {"training", "analysis"} <= set(env_imports), sorted(env_imports)
    assert "torch" in env_imports["training"]  # the check sees through sftrl to its imports
    for env, needed in env_imports.items():
        conda, pip = read_env(env)
        missing = needed - set(conda) - set(pip)
        assert not missing, f"rules with envs/{env}.yaml import {sorted(missing)}, which it lacks"


def test_driver_only_packages_are_not_imported_by_rules(env_imports):
    imported = set().union(*env_imports.values())
    assert not imported & DRIVER_ONLY, f"rules import {sorted(imported & DRIVER_ONLY)}: add to their env"


# --- pinned environments -------------------------------------------------------------------------


def read_pins(name: str) -> tuple[dict[str, str], dict[str, str]]:
    """(conda specs, pip pins) of envs/<name>.linux-64.pin.txt: name -> version or range."""
    conda, pip = {}, {}
    for line in (ENVS / f"{name}.linux-64.pin.txt").read_text().splitlines():
        if line.startswith("# pip: "):
            req = Requirement(line.removeprefix("# pip: "))
            pip[canonical(req.name)] = str(req.specifier)
        elif line and not line.startswith("#"):
            spec, _, version = line.partition("=")
            conda[canonical(spec)] = version.lstrip("=")
    return conda, pip


@pytest.mark.parametrize("name", env_names())
def test_every_env_has_a_pin_file_within_its_ranges(name):
    """envs/<env>.linux-64.pin.txt (preferred by --sdm conda) pins every package of the env file,
    within its ranges; the post-deploy script installs the pip pins of an env made from it."""
    conda, pip = read_env(name)
    pinned_conda, pinned_pip = read_pins(name)
    assert set(conda) == set(pinned_conda), f"{name}: conda packages {sorted(conda)} vs pins {sorted(pinned_conda)}"
    assert set(pip) <= set(pinned_pip), f"{name}: unpinned {sorted(set(pip) - set(pinned_pip))}"
    python = pinned_conda["python"]
    assert conda["python"].contains(f"{python}.0") and sys.version.startswith(python + "."), python
    for dist, req in pip.items():
        exact = pinned_pip[dist]
        if exact.startswith("=="):
            assert req.specifier.contains(exact[2:]), f"{name}: {dist}{exact} outside {req}"
        else:  # not installed where the pins were written: the range itself
            assert exact == str(req.specifier), (name, dist, exact)
    script = (ENVS / "install-sftrl.sh").read_text()  # what every post-deploy script runs
    assert '"${1%.post-deploy.sh}.pin.txt"' in script and "sed -n 's/^# pip: //p'" in script


def test_no_env_file_cites_a_missing_document():
    for path in [*ENVS.glob("*.yaml"), *ENVS.glob("*.sh")]:
        for doc in re.findall(r"\b(docs/[\w./-]+)", path.read_text()):
            assert (ROOT / doc).exists(), f"{path.name} cites {doc}, which does not exist"


# --- each environment's rules run with what their environment lacks blocked ---------------------

# In a job's script (Snakemake runs it as .snakemake/scripts/tmp<random>.<script>), every module
# its rule's environment lacks is made unimportable (sys.modules[name] = None, as for a module
# that is not installed); each blocked script is recorded in $SFTRL_BLOCK_LOG.
SITECUSTOMIZE = """
import json, os, sys
_argv0 = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
if os.sep + os.path.join(".snakemake", "scripts") + os.sep in _argv0:
    _script = os.path.basename(_argv0).split(".", 1)[-1]
    _blocked = json.loads(os.environ["SFTRL_BLOCKED"]).get(_script)
    if _blocked is not None:
        for _name in _blocked:
            sys.modules[_name] = None
        with open(os.environ["SFTRL_BLOCK_LOG"], "a") as _fh:
            _fh.write(_script + "\\n")
"""


def blocked_modules() -> dict[str, list[str]]:
    """script -> the top-level modules installed here that its rule's environment would not have:
    neither the env file's packages and what they need, nor Snakemake's (the job's preamble
    loads Snakemake)."""
    sys.path.insert(0, str(ENVS))
    try:
        from pin import closure
    finally:
        sys.path.remove(str(ENVS))
    providers = md.packages_distributions()
    snakemake = {canonical(d) for d in closure(["snakemake"])}
    by_env = {}
    for name in env_names():
        conda, pip = read_env(name)
        allowed = snakemake | {canonical(d) for d in closure([str(r) for r in pip.values()])} | {"sftrl"}
        by_env[name] = sorted(
            module
            for module, dists in providers.items()
            if not module.startswith("_") and not {canonical(d) for d in dists} & allowed
        )
    scripts = {}
    for _rule, (_path, body) in rule_blocks().items():
        env, script = directive(body, "conda"), directive(body, "script")
        if env and script:
            scripts[Path(script).name] = by_env[Path(env).stem]
    return scripts


@pytest.mark.slow
def test_each_rule_runs_without_what_its_env_lacks(reduced_study, tmp_path):
    """The reduced study's rules run again with their environment's missing packages blocked:
    every table, plot and report page, the data, and one job of each model rule (the base, an SFT
    segment, a PPO run, an evaluation, an SVD, a spectrum, an edit); table_rl_sweep is not in
    this study."""
    blocked = blocked_modules()
    assert {"torch", "numpy", "safetensors", "transformers", "altair"} <= set(blocked["table_spectrum.py"])
    assert "polars" not in blocked["table_spectrum.py"] and "altair" not in blocked["plot_chart.py"]
    assert "torch" in blocked["plot_chart.py"] and "altair" in blocked["evaluate.py"]
    work = tmp_path / "study"
    shutil.copytree(reduced_study, work, symlinks=True)  # results and .snakemake with their dates
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "blocked.log"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "SFTRL_BLOCKED": json.dumps(blocked),
           "SFTRL_BLOCK_LOG": str(log)}  # fmt: skip
    res, one = "results/test", "results/test/seed-0"  # the study's, and its one replicate's
    donor = json.loads((work / one / "eval" / "peak-ood.json").read_text())["model"]
    cheap = [f"{one}/eval/base/id.json", f"{one}/svd/base.safetensors", f"{one}/spectrum/base--sft-4.parquet",
             f"{one}/eval/layerreset-{donor}-into-sft-8-layers0-0.5/id.json"]  # fmt: skip
    # One job of each rule, forced by its output file (forcing a rule by name would rerun every job
    # of it that the targets need: every evaluation, edit and spectrum of the study).
    plot = sorted((work / res / "plots").glob("*.html"))[0].stem
    page = sorted((work / res / "report" / "tables").glob("*.html"))[0].name
    tables = [f"{d}/tables/{name}" for d in (res, one) for name in ("sft-trajectory.md", "rl-recovery.md",
              "stages.md", "spectrum.md", "spectrum-profile.csv", "uv-merge.md")]  # fmt: skip
    summaries = [f"{one}/eval/peak-ood.json", *tables, f"{res}/tables/findings.md", f"{res}/benchmarks/summary.md",
                 f"{res}/plots/{plot}.html", f"{res}/report/tables/{page}", *cheap]  # fmt: skip
    runs = [
        # tables, a plot and a report page (after the checkpoint peak_ood) and the cheap model rules
        (summaries, summaries),
        # training: the base, the first SFT segment and its PPO run (nothing after them is a target)
        ([f"{one}/models/base", f"{one}/models/sft-4", f"{one}/models/ppo-4"], ["base", "sft", "rl"]),
        # the data last (every model is older than the data after it)
        ([f"{res}/data/{n}.parquet" for n in ("sft", "rl", "eval-id", "eval-ood", "pretrain")],
         ["data_sft", "data_rl", "data_eval", "data_pretrain"]),
    ]  # fmt: skip
    for targets, rules in runs:
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
               "--workflow-profile", "none", "--cores", "2", "--forcerun", *rules, "--", *targets]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    ran = set(log.read_text().split())
    wanted = {directive(body, "script").rsplit("/", 1)[1] for rule, (_, body) in rule_blocks().items()
              if rule != "table_rl_sweep" and directive(body, "script")}  # fmt: skip
    assert wanted <= ran, f"not run with their env's modules blocked: {sorted(wanted - ran)}"
    # The same config and seed give the same results (README, Development): what these runs made
    # again -- the base, the first SFT segment, its PPO run (sampled episodes), the base's
    # evaluation and an edit's -- is byte for byte what the study first made: weights and every
    # answer of every attempt (the tables read nothing else).
    import polars as pl

    for model in ("base", "sft-4", "ppo-4"):
        again, first = work / one / "models" / model / "model.safetensors", reduced_study / one / "models" / model
        assert again.stat().st_mtime > (first / "model.safetensors").stat().st_mtime, model  # made again
        assert again.read_bytes() == (first / "model.safetensors").read_bytes(), model
    for evaluated in ("base", f"layerreset-{donor}-into-sft-8-layers0-0.5"):
        for split in ("id", "ood"):
            path = f"{one}/eval/{evaluated}/{split}.parquet"
            assert (work / path).stat().st_mtime > (reduced_study / path).stat().st_mtime, path
            assert pl.read_parquet(work / path).equals(pl.read_parquet(reduced_study / path)), path
