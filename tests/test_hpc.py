"""What cluster users need (issue 13): outputs a group can read, the SLURM profile installed where
Snakemake finds it by name, the resources a cluster asks for, the code fingerprints behind the
rerun triggers, the README's DAG drawings, and training metrics for TensorBoard.

The SLURM profile's literal command is tested in test_slurm.py, reruns in test_rebuild.py and the
conda environments in test_envs.py."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sftrl.atomic import atomic_path, write_text
from sftrl.config import ConfigError, validate
from sftrl.fingerprint import code_fingerprint, used_modules
from sftrl.launch import gpu_count

from conftest import ROOT, default_config
from test_envs import directive, rule_blocks

SCRIPTS = ROOT / "scripts"


# --- 3. results a group can share -------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_atomic_outputs_get_the_modes_of_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_text("x", tmp_path / "table.md")
        with atomic_path(tmp_path / "model", directory=True) as tmp:
            (tmp / "config.json").write_text("{}")
        plain = tmp_path / "plain"
        plain.mkdir()
    finally:
        os.umask(old)
    assert _mode(tmp_path / "table.md") == 0o666 & ~umask
    assert _mode(tmp_path / "model") == _mode(plain) == 0o777 & ~umask
    assert _mode(tmp_path / "model" / "config.json") == 0o666 & ~umask


def test_files_a_writer_made_private_are_shared_too(tmp_path):
    """safetensors' save_file writes 600 whatever the umask: inside an atomic output it is opened up."""
    import torch
    from safetensors.torch import save_file

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "model", directory=True) as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
        with atomic_path(tmp_path / "svd.safetensors") as tmp:
            save_file({"s": torch.zeros(2)}, str(tmp))
    finally:
        os.umask(old)
    assert _mode(tmp_path / "model" / "model.safetensors") == _mode(tmp_path / "svd.safetensors") == 0o644


@pytest.mark.slow
def test_every_output_of_a_run_is_readable_by_the_group(reduced_study):
    """The reduced study (run under the test's umask): no file or directory is private."""
    umask = os.umask(0)
    os.umask(umask)
    results = reduced_study / "results" / "test"
    paths = [results, *results.rglob("*")]
    wrong = [
        f"{p.relative_to(results)}: {_mode(p):o}"
        for p in paths
        if not p.is_symlink() and _mode(p) != (0o777 if p.is_dir() else 0o666) & ~umask
    ]
    assert len(paths) > 100 and not wrong, wrong[:20]


# --- 1. the profile as users type it -----------------------------------------------------------


def _sftrl(*args: str, env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "import sys; from sftrl.cli import main; sys.exit(main())", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, cwd=ROOT)


def test_profile_install_puts_the_slurm_profile_where_snakemake_looks(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "HOME": str(tmp_path / "home")}
    installed = tmp_path / "config" / "snakemake" / "slurm" / "profile.yaml"
    first = _sftrl("profile", "install", env=env)
    assert first.returncode == 0, first.stderr
    assert installed.read_text() == (ROOT / "profiles" / "slurm" / "profile.yaml").read_text()
    assert _sftrl("profile", "install", env=env).stdout.count("already installed") == 1
    # Snakemake itself resolves the name to the installed copy
    probe = "from snakemake.cli import get_profile_dir; print(get_profile_dir('slurm')[1])"
    where = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                           env={**os.environ, **env}, cwd=tmp_path)  # fmt: skip
    assert where.stdout.strip() == str(installed)
    # a different profile is kept unless --force; the error is one line, exit status 2
    installed.write_text("executor: local\n")
    refused = _sftrl("profile", "install", env=env)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "--force" in refused.stderr and installed.read_text() == "executor: local\n"
    assert _sftrl("profile", "install", "--force", env=env).returncode == 0
    assert "executor: slurm" in installed.read_text()
    # --dest: any directory; without XDG_CONFIG_HOME the default is ~/.config
    assert _sftrl("profile", "install", "--dest", str(tmp_path / "elsewhere"), env=env).returncode == 0
    assert (tmp_path / "elsewhere" / "profile.yaml").is_file()
    home = {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": ""}
    assert _sftrl("profile", "install", env=home).returncode == 0
    assert (tmp_path / "home" / ".config" / "snakemake" / "slurm" / "profile.yaml").is_file()


def test_the_workflow_profile_does_not_cap_cluster_cores_or_threads():
    """profiles/default is read on a cluster run too: `cores` there would cap every job's threads
    (and be passed to each job as --cores); `jobs` is replaced by the cluster profile's."""
    default = yaml.safe_load((ROOT / "profiles" / "default" / "profile.yaml").read_text())
    slurm = yaml.safe_load((ROOT / "profiles" / "slurm" / "profile.yaml").read_text())
    assert "cores" not in default and "cores" not in slurm and "max-threads" not in default
    assert default["jobs"] == 2 and slurm["jobs"] == 100
    assert default["rerun-triggers"] == slurm["rerun-triggers"] == ["mtime", "params", "input", "software-env"]


# --- 4. the resources clusters need ------------------------------------------------------------


CLUSTER_KEYS = {
    "qos": "high",
    "slurm_extra": "--mail-type=END --nice=10",
    "tasks": 1,
    "gpu_model": "a100",
    "constraint": "a100&ib",
    "runtime": "4h",
    "slurm_partition": "gpu",
    "slurm_account": "proj",
}


def test_the_schema_accepts_what_clusters_need():
    cfg = default_config()
    cfg["resources"]["sft"] = {**cfg["resources"]["sft"], "gpu": 4, "cpus_per_gpu": 8, "nodes": 1, **CLUSTER_KEYS}
    cfg["resources"]["rl"] = {"gres": "gpu:a100:4", "runtime": "2d", "mem_mb": 1000}
    cfg["resources"]["data"] = {"gres": "tmpdisk:100G", "runtime": "90 min"}
    validate(cfg)


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        ({"runtime": "4 fortnights"}, "resources.sft.runtime"),
        ({"runtime": "600000m"}, "resources.sft.runtime: '600000m' is not between 1 minute and a year"),
        ({"nodes": 2}, "resources.sft.nodes"),
        ({"gpu": 2, "gres": "gpu:2"}, "gpu and gres 'gpu:2' both ask for GPUs"),
        ({"gres": "gpu:a100:'4'"}, "resources.sft.gres"),
        ({"slurm_extra": "--mail-type=END\n--nice=1"}, "resources.sft.slurm_extra"),
        ({"qos": 3}, "resources.sft.qos"),
    ],
)
def test_the_schema_refuses_resources_that_cannot_work(resources, expected):
    cfg = default_config()
    cfg["resources"]["sft"] = {**cfg["resources"]["sft"], **resources}
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert expected in str(err.value)


def test_gpu_count_reads_gpu_gres_and_gpu_model():
    assert gpu_count({"gpu": 4, "gpu_model": "a100"}) == 4
    assert gpu_count({"gres": "gpu:a100:2"}) == gpu_count({"gres": "gpu:2"}) == 2
    assert gpu_count({"gpu_model": "h100"}) == 1  # the plugin asks for one GPU then
    assert gpu_count({"gres": "tmpdisk:100G"}) == gpu_count({"cpus_per_task": 4}) == 0


# --- 5. reruns that follow the code -----------------------------------------------------------


def test_every_rule_that_runs_code_has_its_code_fingerprint_as_a_param():
    missing = []
    for rule, (_, body) in rule_blocks().items():
        script = directive(body, "script")
        if script and f'code=code("{Path(script).name}"' not in body:
            missing.append(f"{rule}: {script}")
    assert not missing, f"rules without code=code(<their script>): {missing}"


def test_fingerprints_follow_the_modules_each_script_uses():
    def used(script, *modules):
        return set(used_modules(SCRIPTS / script, *modules))

    rl = used("rl.py", "sftrl.ppo", "sftrl.grpo")
    sft = used("sft.py", "sftrl.sft")
    assert {"sftrl.ppo", "sftrl.grpo", "sftrl.evaluate", "sftrl.models", "sftrl.launch"} <= rl
    assert "sftrl.ppo" not in sft and "sftrl.sft" in sft  # launch's lazy imports are not followed
    assert "sftrl.ppo" not in used("evaluate.py") | used("table_stages.py") | used("base.py")
    # the table code runs without torch: it reaches no module that imports it
    tables = used("table_spectrum.py")
    light = {"sftrl", "sftrl.atomic", "sftrl.constants", "sftrl.logs", "sftrl.study"}
    assert "sftrl.tables.spectra" in tables and tables <= light | {m for m in tables if m.startswith("sftrl.tables")}


def test_fingerprint_changes_with_the_code_not_with_its_place_or_mtime(tmp_path):
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    before = code_fingerprint(SCRIPTS / "evaluate.py")
    assert code_fingerprint(tmp_path / "scripts" / "evaluate.py") == before  # another clone
    os.utime(tmp_path / "scripts" / "evaluate.py")
    assert code_fingerprint(tmp_path / "scripts" / "evaluate.py") == before
    with open(tmp_path / "scripts" / "evaluate.py", "a") as fh:
        fh.write("# an edit\n")
    assert code_fingerprint(tmp_path / "scripts" / "evaluate.py") != before


# --- 2. DAG drawings that work as documented ---------------------------------------------------


def readme_drawing_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"(?m)^(snakemake [^\n#]*\| dot -Tsvg > \S+\.svg)", text)


def _require_dot():
    if shutil.which("dot") is None:
        if os.environ.get("SFTRL_REQUIRE_GRAPHVIZ") == "1":
            pytest.fail("graphviz's dot is required (SFTRL_REQUIRE_GRAPHVIZ=1) but not on PATH")
        pytest.skip("graphviz's dot is not installed (apt-get install graphviz)")


def test_the_readme_has_the_drawing_commands():
    commands = readme_drawing_commands()
    assert {re.search(r"--(\w+)", c).group(1) for c in commands} == {"rulegraph", "dag", "filegraph"}, commands


@pytest.mark.parametrize("configfile", [None, "config/ablation-rl.yaml"])
def test_the_readme_drawing_commands_give_svg(tmp_path, configfile):
    """Each README command as written (in the repository, through the workflow profile), with the
    svg sent to a temporary file; with --configfile too (Snakemake's config message goes to stderr)."""
    _require_dot()
    for command in readme_drawing_commands():
        name = command.rsplit("> ", 1)[1]
        if configfile:
            command = command.replace("snakemake ", f"snakemake --configfile {configfile} ", 1)
        command = command.replace(f"> {name}", f"> {tmp_path / name}")
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-2000:]}"
        svg = (tmp_path / name).read_text()
        assert svg.startswith("<?xml") and "<svg" in svg and svg.rstrip().endswith("</svg>"), command
        if "--dag" in command:
            texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
            # a job node: its rule, then its wildcards (the PPO run from each SFT step: start)
            runs = [texts[i + 1] for i, t in enumerate(texts[:-1]) if t == "rl"]
            assert runs and all(re.fullmatch(r"start: \d+", r) for r in runs), runs
            assert len(set(runs)) == len(runs) > 1, runs


# --- 6. records users expect -------------------------------------------------------------------


def test_rules_that_train_evaluate_or_decompose_have_benchmarks():
    blocks = {rule: body for rule, (_, body) in rule_blocks().items()}
    blocks["rl_variant"] = (ROOT / "rules" / "rl.smk").read_text().split("use rule rl as rl_variant with:")[1]
    for rule in ("base", "sft", "rl", "rl_variant", "evaluate", "svd", "spectrum", "edit"):
        assert re.search(r'(?m)^    benchmark:\n\s+(?:S|BASE)\(f?"benchmarks/\w+/', blocks[rule]), (
            f"rule {rule}: no benchmark:"
        )


@pytest.mark.slow
def test_the_benchmark_table_lists_every_benchmarked_job(reduced_study):
    import polars as pl

    results = reduced_study / "results" / "test"
    records = sorted((results / "seed-0" / "benchmarks").glob("*/*.tsv"))  # every job is the replicate's
    assert not list((results / "benchmarks").glob("*/*.tsv"))  # (a tiny base is one per replicate)
    table = pl.read_csv(results / "benchmarks" / "summary.csv")
    assert table.height == len(records) > 10 and set(table["seed"]) == {0}
    assert {"base", "sft", "rl", "evaluate", "svd", "spectrum", "edits"} == set(table["stage"])
    assert (table["seconds"] > 0).all() and (table["max_rss_mb"] > 0).all()
    assert "| sft | sft-4 | 0 |" in (results / "benchmarks" / "summary.md").read_text()
    page = (results / "report" / "tables" / "benchmarks.html").read_text()
    assert "<table>" in page and "sft-8" in page


def _scalars(logdir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = [p.parent for p in logdir.rglob("events.out.tfevents.*")]
    tags = set()
    for run in runs:
        acc = EventAccumulator(str(run))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


def test_report_to_tensorboard_writes_sft_and_ppo_events(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from sftrl import data
    from sftrl.models import build_tiny_model, build_tiny_tokenizer
    from sftrl.ppo import PPOConfig, train_ppo
    from sftrl.sft import TrainSettings, train_segment

    arch = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, max_position_embeddings=64)
    tok = build_tiny_tokenizer()
    hp = TrainSettings(max_steps=4, lr=1e-3, batch_size=16, per_device_batch_size=16, seed=0)
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "")  # train_segment sets it; restored afterwards
    train_segment(build_tiny_model(arch, tok, 0), tok, data.make_sft(64, 0, "compact"), hp, 4, tmp_path / "sft",
                  tmp_path / "w", report_to="tensorboard", logging_dir=tmp_path / "tb" / "sft-4")  # fmt: skip
    assert any("loss" in tag for tag in _scalars(tmp_path / "tb" / "sft-4"))
    cfg = PPOConfig(turns=1, max_new_tokens=8, num_updates=2, episodes_per_update=8, minibatch_size=8,
                    micro_batch_size=8, rollout_batch_size=8, save_every=0)  # fmt: skip
    train_ppo(tmp_path / "sft", data.make_rl(8, 0, "compact"), "compact", cfg, tmp_path / "ppo", tmp_path / "wp",
              tmp_path / "m.jsonl", progress=False, report_to="tensorboard", logging_dir=tmp_path / "tb" / "ppo-4")  # fmt: skip  # noqa: E501
    tags = _scalars(tmp_path / "tb" / "ppo-4")
    assert {"charts/mean_reward", "charts/success_rate", "losses/approx_kl"} <= tags, tags
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 2  # the JSONL as always


def test_report_to_is_checked():
    cfg = default_config()
    cfg["logging"] = {"report_to": "mlflow"}
    with pytest.raises(ConfigError, match="logging.report_to"):
        validate(cfg)
