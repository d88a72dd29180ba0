"""The study's decisions, as plain functions of its config (no Snakemake, no heavy imports).

Which models a study trains and how they are named, which RL runs and sweep variants exist, which
model pairs the spectra compare, which model is Premax / Moderate / RL in the stage table, the
grammar of edited-model names (built and parsed here only), and the registry of result tables and
plots. ``rules/common.smk`` wires these into input functions and targets; the table code reads
names with :func:`parse_edit_name`. Model names (docs/study.md §5, §6):

* ``base`` -- the base model (step 0);
* ``sft-<step>`` -- the SFT checkpoint at an optimiser step;
* ``ppo-<step>`` / ``grpo-<step>`` -- RL (by algorithm) from ``sft-<step>``; a sweep variant adds
  ``-<variant>``;
* ``<method>-<donor>-into-<target>-<param>`` -- an edited model, ``method`` one of ``uvmerge``,
  ``sigmaswap``, ``tripletswap`` (``param`` = ``top<f>[-bottom<f>]``, fractions of the spectrum)
  or ``layerreset`` (``param`` = ``layers<from>-<to>``, fractions of the depth).

Decisions that depend on evaluation results take the peak-OOD SFT checkpoint as ``peak``, a
function that gives its name: it is known only once the SFT checkpoints are evaluated (a Snakemake
checkpoint), so it is asked for only where the config makes it matter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

SPLITS = ("id", "ood")
RL_ALGORITHMS = ("ppo", "grpo")
# A trained model's name (regular expressions for Snakemake's wildcard constraints and the tables).
MODEL = r"base|sft-\d+|(?:ppo|grpo)-\d+"
BAND = r"top[0-9.]+(?:-bottom[0-9.]+)?"
LAYERS = r"layers[0-9.]+-[0-9.]+"
EDIT_PARAM = rf"{BAND}|{LAYERS}"
# Short method names (in model names) -> the tables' names.
EDIT_METHODS = {
    "uvmerge": "uv-merge",
    "sigmaswap": "sigma-swap",
    "tripletswap": "triplet-swap",
    "layerreset": "layer-reset",
}
SPECTRAL_METHODS = {
    "uv_merge": "uvmerge",
    "sigma_swap": "sigmaswap",
    "triplet_swap": "tripletswap",
}  # config key -> method
EDIT_NAME = re.compile(
    rf"^(?P<method>{'|'.join(EDIT_METHODS)})-(?P<donor>{MODEL})-into-(?P<target>{MODEL})-"
    r"(?:top(?P<top>[0-9.]+)(?:-bottom(?P<bottom>[0-9.]+))?|layers(?P<lo>[0-9.]+)-(?P<hi>[0-9.]+))$"
)


# --- seeds: independent replicates of the training stages ----------------------------------------

# The seed of replicate n is each training stage's configured seed plus n: the tiny model's
# initialisation (model.tiny.seed), the base's data order (base.seed), SFT's data order
# (sft.seed) and RL's sampling and hand order (rl.seed). Replicate 0 is the configured run itself.
# The data sets (pretraining data included) and the evaluation (hands and eval.seed) are the same
# for every replicate: replicates differ in training only.
SEEDED = ("model.tiny.seed", "base.seed", "sft.seed", "rl.seed")


def seeds(cfg: dict) -> list[int]:
    """The study's replicates (``seeds``; default ``[0]``), in increasing order."""
    return sorted(cfg.get("seeds") or [0])


def replicate(settings: dict | None, seed: int) -> dict | None:
    """A section with a ``seed`` key (``sft:``, ``rl:``, ``base:``, ``model.tiny``) as replicate
    ``seed`` runs it: its seed plus ``seed`` (a copy; None stays None)."""
    if settings is None:
        return None
    return {**settings, "seed": settings["seed"] + int(seed)}


def shared_base(cfg: dict) -> bool:
    """Whether one base model serves every replicate: local weights are the same for all of them
    (models/base, its evaluation and SVD are computed once); a tiny base is trained per replicate."""
    return cfg["model"]["source"] != "tiny"


# --- trained models ------------------------------------------------------------------------------


def data_sets(cfg: dict) -> list[str]:
    """The generated data sets (``data/<name>.parquet``); pretraining data for the tiny source only."""
    return ["sft", "rl", "eval-id", "eval-ood"] + (["pretrain"] if cfg["model"]["source"] == "tiny" else [])


def sft_steps(cfg: dict) -> list[int]:
    return sorted(cfg["sft"]["checkpoints"])


def sft_models(cfg: dict) -> list[str]:
    return [f"sft-{s}" for s in sft_steps(cfg)]


def trajectory_models(cfg: dict) -> list[str]:
    """The SFT trajectory: the base (step 0) and every SFT checkpoint."""
    return ["base", *sft_models(cfg)]


def rl_algorithm(cfg: dict) -> str:
    """``ppo`` or ``grpo``: it names the RL models."""
    return cfg["rl"]["algorithm"]


def rl_steps(cfg: dict) -> list[int]:
    """SFT steps that RL starts from (``rl.from``; null = every SFT checkpoint)."""
    return sorted(cfg["rl"]["from"] or sft_steps(cfg))


def rl_model(cfg: dict, step: int) -> str:
    return f"{rl_algorithm(cfg)}-{step}"


def rl_models(cfg: dict) -> list[str]:
    return [rl_model(cfg, s) for s in rl_steps(cfg)]


def study_models(cfg: dict) -> list[str]:
    """Every model the study trains: the base, the SFT checkpoints and the RL runs."""
    return trajectory_models(cfg) + rl_models(cfg)


def sweep_variants(cfg: dict) -> dict[str, dict]:
    """``rl_sweep.variants`` (a list, so that a study's file replaces it whole rather than merging
    into the default's) as ``{name: overrides of rl}``."""
    variants = (cfg.get("rl_sweep") or {}).get("variants") or []
    return {v["name"]: {k: x for k, x in v.items() if k != "name"} for v in variants}


def rl_hparams(cfg: dict, variant: str | None = None) -> dict:
    """The settings an RL run depends on: ``rl:`` without ``from`` (which only chooses the runs),
    the verifier's arithmetic (``eval.arithmetic``: RL is scored as evaluation is), and a sweep
    variant's overrides on top."""
    hp = {k: v for k, v in cfg["rl"].items() if k != "from"}
    hp["arithmetic"] = cfg["eval"]["arithmetic"]
    if variant is not None:
        hp |= sweep_variants(cfg)[variant]
    return hp


def rl_sweep_steps(cfg: dict) -> list[int]:
    """The SFT steps the RL sweep starts from (``rl_sweep.from``)."""
    return sorted((cfg.get("rl_sweep") or {}).get("from") or [])


def rl_sweep_models(cfg: dict) -> list[str]:
    """The runs of the RL sweep: the default runs from the sweep's steps (its ``default`` rows;
    only those of ``rl.from``), then ``<algorithm>-<step>-<variant>`` per variant."""
    steps = rl_sweep_steps(cfg)
    runs = [f"{rl_model(cfg, s)}-{v}" for v in sweep_variants(cfg) for s in steps]
    return [rl_model(cfg, s) for s in steps if s in rl_steps(cfg)] + runs


def sft_step(name: str) -> int:
    """The step of a model of the SFT trajectory: ``base`` is 0, ``sft-<step>`` is ``<step>``;
    ValueError for any other name."""
    m = re.fullmatch(r"base|sft-(\d+)", name)
    if not m:
        raise ValueError(f"not a trajectory model name: {name!r} (expected base or sft-<step>)")
    return int(m.group(1) or 0)


def model_step(name: str) -> int:
    """The SFT step in a model's name (``base`` = 0)."""
    m = re.fullmatch(r"base|(?:sft|ppo|grpo)-(\d+)(?:-.+)?", name)
    if not m:
        raise ValueError(f"not a trained model's name: {name!r}")
    return int(m.group(1) or 0)


# --- edits ---------------------------------------------------------------------------------------


def band_name(top: float, bottom: float) -> str:
    """``top0.2``, ``top0.1-bottom0.1``: a spectral edit's fractions, as its name writes them."""
    return f"top{top:g}" + (f"-bottom{bottom:g}" if bottom else "")


def layers_name(lo: float, hi: float) -> str:
    """``layers0-0.25``: a layer reset's range, as fractions of the depth."""
    return f"layers{lo:g}-{hi:g}"


def layer_range(lo: float, hi: float, depth: int) -> list[int]:
    """The decoder layers ``[lo, hi)`` of a ``depth``-layer model, the ends rounded to the nearest
    layer: ``[0, 0.25)`` is layer 0 of 4, layers 0-9 of 40 and 0-6 of 28 (the study's "first 25%
    of layers"). Empty when the range is narrower than a layer."""
    return list(range(math.floor(lo * depth + 0.5), math.floor(hi * depth + 0.5)))


def format_layers(layers: list[int]) -> str:
    """[0, 1, 2, 3, 8] → "0-3,8"."""
    runs: list[list[int]] = []
    for i in layers:
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in runs) or "none"


@dataclass(frozen=True)
class Edit:
    """One edited model: ``method`` (short: ``uvmerge`` ...), donor and target model names, and
    either ``band``, the spectral fractions (top, bottom), or ``layers``, the range of the depth
    (from, to)."""

    method: str
    donor: str
    target: str
    band: tuple[float, float] | None = None
    layers: tuple[float, float] | None = None

    @property
    def top(self) -> float | None:
        return self.band[0] if self.band else None

    @property
    def bottom(self) -> float | None:
        return self.band[1] if self.band else None

    @property
    def param(self) -> str:
        if self.method == "layerreset":
            return layers_name(*self.layers)
        return band_name(*self.band)

    @property
    def name(self) -> str:
        return f"{self.method}-{self.donor}-into-{self.target}-{self.param}"

    @property
    def reverse(self) -> bool:
        """The reverse experiment: an SFT model's directions into its RL model."""
        return self.donor.startswith("sft-") and self.target.startswith(tuple(f"{a}-" for a in RL_ALGORITHMS))


def parse_edit(name: str) -> Edit:
    """The :class:`Edit` an edited model's name stands for; ValueError naming the grammar otherwise."""
    m = EDIT_NAME.match(name)
    if not m:
        raise ValueError(
            f"not an edited model name: {name!r} (expected <method>-<donor>-into-<target>-top<f>[-bottom<f>] "
            "or layerreset-<donor>-into-<target>-layers<from>-<to>, fractions of the depth)"
        )
    d = m.groupdict()
    if d["top"] is not None:
        return Edit(d["method"], d["donor"], d["target"], band=(float(d["top"]), float(d["bottom"] or 0)))
    return Edit(d["method"], d["donor"], d["target"], layers=(float(d["lo"]), float(d["hi"])))


def parse_edit_name(name: str) -> dict:
    """An edited model's name as the tables' columns: name, method (``uv-merge`` ...), donor,
    target, top, bottom (spectral edits) or layers (``0-0.25``, layer resets)."""
    e = parse_edit(name)
    return {
        "name": name,
        "method": EDIT_METHODS[e.method],
        "donor": e.donor,
        "target": e.target,
        "top": e.top,
        "bottom": e.bottom,
        "layers": "{:g}-{:g}".format(*e.layers) if e.layers else None,
    }


Peak = Callable[[], str]  # gives the peak-OOD SFT checkpoint's name


def donor_model(cfg: dict, peak: Peak) -> str:
    """The edits' donor: ``edits.donor``, or the peak-OOD SFT checkpoint for ``best-ood``."""
    donor = cfg["edits"]["donor"]
    return peak() if donor == "best-ood" else donor


def target_model(cfg: dict) -> str:
    """The edits' target: ``edits.target``, or the last SFT checkpoint for ``last``."""
    target = cfg["edits"]["target"]
    return f"sft-{sft_steps(cfg)[-1]}" if target == "last" else target


def edits(cfg: dict, peak: Peak) -> list[Edit]:
    """Every edited model of the config's sweeps, in the config's order: the spectral edits, the
    layer resets, then the reverse experiment per RL run (when ``edits.reverse``)."""
    e = cfg["edits"]
    donor, target = donor_model(cfg, peak), target_model(cfg)
    out = [Edit(method, donor, target, band=(t, b)) for key, method in SPECTRAL_METHODS.items() for t, b in e[key]]
    out += [Edit("layerreset", donor, target, layers=(lo, hi)) for lo, hi in e["layer_reset"]]
    if e["reverse"]:
        out += [Edit("uvmerge", f"sft-{s}", rl_model(cfg, s), band=(1.0, 0.0)) for s in rl_steps(cfg)]
    return out


def reset_layers(cfg: dict, depth: int) -> dict[str, list[int]]:
    """Each layer reset's name part (``layers0-0.25``) -> the decoder layers it resets."""
    return {layers_name(lo, hi): layer_range(lo, hi, depth) for lo, hi in cfg["edits"]["layer_reset"]}


def layer_ids(cfg: dict, depth: int) -> dict[str, str]:
    """Each layer reset's name part -> its layer ids as the layer-reset table shows them (``0-6``)."""
    return {name: format_layers(ids) for name, ids in reset_layers(cfg, depth).items()}


def edit_job(name: str, depth: int | None) -> dict:
    """What the edit job for the edited model ``name`` does, parsed for its script: its name, the
    method (``uv-merge`` ...), top and bottom fractions, or the layer ids of a ``depth``-layer model."""
    e = parse_edit(name)
    layers = layer_range(*e.layers, depth) if e.layers else None
    return {"name": name, "method": EDIT_METHODS[e.method], "top": e.top, "bottom": e.bottom, "layers": layers}


# --- spectra and the stage table -----------------------------------------------------------------


def spectrum_pairs(cfg: dict, peak: Peak) -> list[tuple[str, str]]:
    """(reference, compared) pairs of ``spectrum.pairs``: base → each SFT checkpoint; the peak →
    each later SFT checkpoint; each RL start → its RL model."""
    kinds = cfg["spectrum"]["pairs"]
    pairs = []
    if "base-to-sft" in kinds:
        pairs += [("base", m) for m in sft_models(cfg)]
    if "peak-to-later" in kinds:
        top = peak()
        pairs += [(top, f"sft-{s}") for s in sft_steps(cfg) if s > model_step(top)]
    if "sft-to-rl" in kinds:
        pairs += [(f"sft-{s}", rl_model(cfg, s)) for s in rl_steps(cfg)]
    return pairs


def moderate_model(cfg: dict) -> str | None:
    """The stage table's "Moderate": a later SFT checkpoint that RL started from.

    Decision: the edits' target (the last SFT checkpoint by default) when an RL run started from
    it, so that the stage table, the edit tables and the spectra describe the same over-trained
    model; otherwise the last SFT checkpoint RL started from. None without RL runs.
    """
    starts = rl_steps(cfg)
    if not starts:
        return None
    target = target_model(cfg)
    if target.startswith("sft-") and model_step(target) in starts:
        return target
    return f"sft-{starts[-1]}"


def moderate_rl_model(cfg: dict) -> str | None:
    moderate = moderate_model(cfg)
    return rl_model(cfg, model_step(moderate)) if moderate else None


def stage_models(cfg: dict, peak: Peak) -> dict[str, str]:
    """Premax, Moderate and RL of the stage table (docs/study.md §9)."""
    return {"Premax": peak(), "Moderate": moderate_model(cfg), "RL": moderate_rl_model(cfg)}


def profile_pairs(cfg: dict, peak: Peak) -> list[tuple[str, str]]:
    """The pairs of the per-index spectrum plots: base → last SFT checkpoint (what SFT did), Premax
    → last SFT checkpoint (what SFT did past the OOD peak) and Moderate → its RL model (what RL
    did), each where ``spectrum.pairs`` computes it; every computed pair if none is."""
    pairs = spectrum_pairs(cfg, peak)
    last = sft_models(cfg)[-1]
    wanted = [("base", last), (peak(), last)] if "peak-to-later" in cfg["spectrum"]["pairs"] else [("base", last)]
    if moderate_model(cfg):
        wanted.append((moderate_model(cfg), moderate_rl_model(cfg)))
    chosen = [p for i, p in enumerate(wanted) if p in pairs and p not in wanted[:i]]
    return chosen or pairs


# --- the registry of results ---------------------------------------------------------------------


def _has_rl(cfg: dict) -> bool:
    return bool(rl_steps(cfg))


def _has_spectral_edits(cfg: dict) -> bool:
    return any(cfg["edits"][key] for key in SPECTRAL_METHODS)


def _has_layer_resets(cfg: dict) -> bool:
    return bool(cfg["edits"]["layer_reset"])


def _always(cfg: dict) -> bool:
    return True


@dataclass(frozen=True)
class Result:
    """One result of the study: a table (``<file>.csv`` and ``.md``, and a report page) when
    ``table(config)``, a plot (``plots/<name>.{html,png,svg}``, a report item) when
    ``plot(config)``; None = never."""

    name: str
    category: str  # the report's category
    title: str
    table: Callable[[dict], bool] | None
    plot: Callable[[dict], bool] | None
    file: str = ""  # the table's path in results/<study>/, without suffix: tables/<name> by default
    # Across seeds (sftrl.tables.seeds): the columns naming a row in every replicate, and the
    # columns beside the accuracies that get an across-seed interval. () = not a per-seed table.
    keys: tuple[str, ...] = ()
    measures: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        return self.file or f"tables/{self.name}"


# The order here is the order of the report's categories and items. The edit tables are written
# together (one rule), so both exist whenever there are edits; a plot needs rows to draw.
_RECOVERY = ("recovery_ood_pct", "recovery_id_pct")
_SPECTRUM = ("mean_rel_dsigma", "mean_angle_u", "mean_angle_v")
RESULTS = (
    # the study's four findings, each as a measured quantity with its interval over seeds and a verdict
    Result("findings", "0. Findings", "The study's four findings, across seeds", _always, None),
    Result("sft-trajectory", "1. SFT and RL", "ID/OOD accuracy along SFT", _always, _always, keys=("model", "step")),
    Result(
        "rl-recovery",
        "1. SFT and RL",
        "OOD recovery by RL per starting checkpoint",
        _has_rl,
        _has_rl,
        keys=("step", "rl_model", "sft_model"),
        measures=("delta_id", "delta_ood", "recovery_pct"),
    ),
    Result(
        "stages",
        "1. SFT and RL",
        "Stage table: Premax, Moderate, RL",
        _has_rl,
        _has_rl,
        keys=("stage",),
        measures=_RECOVERY,
    ),
    Result(
        "spectrum",
        "2. Spectra",
        "Spectral change by matrix type and band",
        _always,
        None,
        keys=("a", "b", "type", "band"),
        measures=_SPECTRUM,
    ),
    Result("sigma-change", "2. Spectra", "Relative singular-value change by index", None, _always),
    Result("principal-angles", "2. Spectra", "Principal angles by index", None, _always),
    Result(
        "uv-merge",
        "3. Edits",
        "UV merge, sigma swap and triplet swap",
        _always,
        _has_spectral_edits,
        keys=("method", "reverse", "top", "bottom", "target"),
        measures=_RECOVERY,
    ),
    Result(
        "layer-reset",
        "3. Edits",
        "Layer reset",
        _always,
        _has_layer_resets,
        keys=("layers", "target"),
        measures=_RECOVERY,
    ),
    # the records of every job that trains, evaluates or decomposes (every replicate's); made last
    Result("benchmarks", "4. Jobs", "Run time and peak memory of every job", _always, None, "benchmarks/summary"),
)
# Tables that are not results of their own: the RL sweep (`snakemake rl_sweep`) and the per-index
# spectra the spectrum plots draw. Both are made per replicate and combined across seeds.
SEEDED_TABLES = {
    "rl-sweep": Result(
        "rl-sweep",
        "",
        "RL sweep",
        None,
        None,
        keys=("variant", "settings", "step"),
        measures=("delta_id", "delta_ood", "success_first", "success_last"),
    ),
    "spectrum-profile": Result(
        "spectrum-profile",
        "",
        "Per-index spectra",
        None,
        None,
        keys=("a", "b", "pair", "type", "bin"),
        measures=("abs_rel_dsigma", "angle_u", "angle_v"),
    ),
}
RESULT = {r.name: r for r in RESULTS}
# Every table made per replicate and combined across seeds (tables/<name>.csv), by name.
SEEDED_RESULT = {**{r.name: r for r in RESULTS if r.keys}, **SEEDED_TABLES}
TABLES = tuple(r.name for r in RESULTS if r.table)  # every table name (the wildcard's values)
PLOTS = tuple(r.name for r in RESULTS if r.plot)


def plot_tables(cfg: dict, plot: str) -> dict[str, str]:
    """The tables a plot is drawn from: its input name -> a table (``tables/<table>.csv``, across
    seeds; ``<table>.seeds`` is its seed-level table, from which plots draw each seed)."""
    rl = {"rl": "rl-recovery"} if _has_rl(cfg) else {}
    return {
        "sft-trajectory": {"trajectory": "sft-trajectory", "trajectory_seeds": "sft-trajectory.seeds"} | rl,
        "rl-recovery": {"rl": "rl-recovery", "rl_seeds": "rl-recovery.seeds"},
        "stages": {"stages": "stages"},
        "sigma-change": {"profile": "spectrum-profile"},
        "principal-angles": {"profile": "spectrum-profile", "summary": "spectrum"},
        "uv-merge": {"uv": "uv-merge"},
        "layer-reset": {"layers": "layer-reset"},
    }[plot]


def table_names(cfg: dict) -> list[str]:
    """The tables this config makes (each also a page of the report), the job records last."""
    return [r.name for r in RESULTS if r.table and r.table(cfg)]


def plot_names(cfg: dict) -> list[str]:
    """The plots this config draws."""
    return [r.name for r in RESULTS if r.plot and r.plot(cfg)]
