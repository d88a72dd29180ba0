"""Validation of a study's configuration: size, then JSON Schema, then cross-field checks of meaning.

Every error names the key (dotted path), says what was expected and shows the value in a short
form (at most ``SHORT`` characters, built without ever expanding more of the value than that, so
a YAML alias bomb still gives a short message), so a misspelt, mistyped or meaningless key fails
before any job runs. The config files themselves are checked too (:func:`check_files`): at most
``MAX_FILE_BYTES``, valid YAML or JSON, and no key twice in one mapping (YAML would silently keep
the last value).

Limits beyond the schema's (documented in the README, section Configuration):
``MAX_VALUES`` values in the whole config (aliases counted as expanded), strings of at most
``MAX_STRING`` characters, integers within 64 bits, floats finite (no ``.nan``/``.inf``), and a
tiny model of at most ``MAX_TINY_PARAMETERS`` parameters.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator, validators

# the study's names, layer ranges and name grammar (sftrl.study), which the checks below use
from sftrl.study import BAND, LAYERS, band_name, layer_range, layers_name, study_models, sweep_variants

SCHEMA = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"

SHORT = 200  # characters of a value shown in a message
MAX_PROBLEMS = 30  # problems listed; the rest are counted
MAX_FILE_BYTES = 1 << 20  # a config file (the default is ~15 kB)
MAX_VALUES = 100_000  # values in a whole config, aliases expanded (the default has ~300)
MAX_STRING = 4096  # characters of one string value (a path at most)
MAX_TINY_PARAMETERS = 1_000_000_000  # the tiny model is built and trained on CPUs
# The longest formula the solver writes for four numbers in 1..13 ("(10+10)/(10/12)");
# tests/test_config_bad.py recomputes it from sftrl.game.solve.
LONGEST_SOLUTION_CHARS = 15
# A failed attempt's feedback turn takes at least one token (a lower bound for any template).
MIN_FEEDBACK_TOKENS = 1


class ConfigError(ValueError):
    """An invalid configuration; the message names the key."""


# --- short forms ---------------------------------------------------------------------------------


class _Full(Exception):
    pass


def short(value, limit: int = SHORT) -> str:
    """``repr``-like text of ``value``, at most ``limit`` characters, built lazily: a huge or
    exponentially aliased structure costs ``O(limit)``, never its expanded size."""
    parts: list[str] = []
    room = [limit + 1]

    def put(text: str) -> None:
        parts.append(text[: room[0]])
        room[0] -= len(text)
        if room[0] <= 0:
            raise _Full

    def walk(v) -> None:
        if isinstance(v, dict):
            put("{")
            for i, (k, x) in enumerate(v.items()):
                put(", " if i else "")
                walk(k)
                put(": ")
                walk(x)
            put("}")
        elif isinstance(v, (list, tuple)):
            put("[")
            for i, x in enumerate(v):
                put(", " if i else "")
                walk(x)
            put("]")
        elif isinstance(v, str):
            put(repr(v[: limit + 1]))
        elif isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 64:
            put(f"<an integer of {v.bit_length()} bits>")
        else:
            put(repr(v)[: limit + 1])

    try:
        walk(value)
    except _Full:
        pass
    text = "".join(parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clip(text: str, limit: int = SHORT) -> str:
    """Plain text cut to ``limit`` characters (``short`` quotes strings; messages are not quoted)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key(path) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            name = str(p)
            out += ("." if out else "") + (name if len(name) <= 60 else name[:57] + "...")
    return out or "<top level>"


# --- size and finiteness ---------------------------------------------------------------------------


def _size_problems(cfg) -> list[str]:
    """Values beyond the limits; stops counting at ``MAX_VALUES`` (an alias bomb never expands)."""
    problems: list[str] = []
    count = 0
    stack: list[tuple[tuple, object]] = [((), cfg)]
    while stack:
        path, v = stack.pop()
        count += 1
        if count > MAX_VALUES:
            return [
                f"{_key(path)}: the configuration holds more than {MAX_VALUES:,} values (a YAML alias "
                f"counted at each use, e.g. an alias bomb); a study config holds a few hundred"
            ]
        if isinstance(v, dict):
            for k, x in v.items():
                if isinstance(k, str):
                    stack.append(((*path, k), x))
                else:
                    problems.append(f"{_key(path)}: key {short(k, 60)} is not a string")
        elif isinstance(v, (list, tuple)):
            stack.extend(((*path, i), x) for i, x in enumerate(v))
        elif isinstance(v, float) and not math.isfinite(v):
            problems.append(f"{_key(path)}: {v!r} is not allowed: expected a finite number")
        elif isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**63:
            problems.append(f"{_key(path)}: {short(v)} is out of range: expected an integer within 64 bits")
        elif isinstance(v, str) and len(v) > MAX_STRING:
            problems.append(f"{_key(path)}: a string of {len(v):,} characters; at most {MAX_STRING} are allowed")
    return sorted(problems)


# --- schema ----------------------------------------------------------------------------------------


def _is_integer(checker, instance) -> bool:
    # JSON Schema counts 64.0 as an integer; the jobs would not (range(64.0), "sft-25.0").
    return isinstance(instance, int) and not isinstance(instance, bool)


_Validator = validators.extend(
    Draft202012Validator, type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer)
)

_RELATIONS = {
    "minimum": "at least",
    "maximum": "at most",
    "exclusiveMinimum": "more than",
    "exclusiveMaximum": "less than",
}
_NUMERIC_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _resolve(schema: dict, root: dict) -> dict:
    ref = schema.get("$ref") if isinstance(schema, dict) else None
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return root.get("$defs", {}).get(ref[len("#/$defs/") :], {})
    return schema if isinstance(schema, dict) else {}


def _range(schema: dict) -> str:
    bounds = [f"{_RELATIONS[k]} {schema[k]}" for k in _RELATIONS if k in schema]
    return f" ({' and '.join(bounds)})" if bounds else ""


def _expect(schema: dict, root: dict, depth: int = 0) -> str:
    """What a (sub)schema accepts, in words."""
    schema = _resolve(schema, root)
    if depth > 3:
        return "a valid value"
    for combinator in ("oneOf", "anyOf"):
        if combinator in schema:
            return " or ".join(_expect(s, root, depth + 1) for s in schema[combinator])
    if "enum" in schema:
        values = ", ".join(repr(v) for v in schema["enum"])
        return f"one of {values}" if len(schema["enum"]) > 1 else values
    if "description" in schema and "pattern" in schema:
        return schema["description"].strip()
    types = schema.get("type", [])
    words = []
    for t in types if isinstance(types, list) else [types]:
        if t == "array":
            words.append("a list" + (f" of {_expect(schema['items'], root, depth + 1)}" if "items" in schema else ""))
        elif t in ("integer", "number"):
            words.append(("an integer" if t == "integer" else "a number") + _range(schema))
        else:
            words.append({"null": "null", "string": "a string", "object": "a mapping", "boolean": "true or false"}[t])
    return " or ".join(words) or "a valid value"


def _describe(error, root: dict) -> str:
    """One line for a schema error, from its parts: never ``error.message``, whose repr of the
    instance is unbounded."""
    key, v, expected, inst = _key(error.absolute_path), error.validator, error.validator_value, error.instance
    if v == "additionalProperties" and isinstance(inst, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(str(k) for k in set(inst) - set(allowed))
        names = ", ".join(f"{key}.{k}" if error.absolute_path else k for k in extra[:5])
        more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
        return _clip(f"unknown key {names}{more}; allowed here: {', '.join(allowed)}", 2 * SHORT)
    if v == "required" and isinstance(inst, dict):
        missing = [k for k in expected if k not in inst]
        return "missing required key " + ", ".join(f"{key}.{k}" if error.absolute_path else k for k in missing)
    if v == "type":
        types = expected if isinstance(expected, list) else [expected]
        text = f"{key}: {short(inst)} is not of type {' or '.join(repr(t) for t in types)}"
        if "integer" in types and isinstance(inst, float) and inst.is_integer():
            text += f" (write {int(inst)}, without a decimal point)"
        elif "number" in types and isinstance(inst, str) and _NUMERIC_TEXT.fullmatch(inst.strip()):
            text += " (YAML reads a number without a decimal point before its exponent as text: write 1.0e-4)"
        return text
    if v == "enum":
        return f"{key}: {short(inst)} is not one of {', '.join(repr(x) for x in expected)}"
    if v in _RELATIONS:
        limit = " (a limit: see the README, section Configuration)" if v == "maximum" else ""
        return f"{key}: {short(inst)} is out of range: expected {_RELATIONS[v]} {expected}{limit}"
    if v == "pattern":
        return f"{key}: {short(inst)} is not allowed here: expected {_expect(error.schema, root)}"
    if v in ("minItems", "maxItems", "minLength", "maxLength"):
        unit = "items" if v.endswith("Items") else "characters"
        bound = "at least" if v.startswith("min") else "at most"
        return f"{key}: {bound} {expected} {unit} expected, got {len(inst)}: {short(inst)}"
    if v == "uniqueItems":
        return f"{key}: the items must be distinct, got {short(inst)}"
    if v in ("oneOf", "anyOf"):
        return f"{key}: {short(inst)} is not allowed here: expected {_expect(error.schema, root)}"
    return f"{key}: {short(inst)} is not valid ({v}: {short(expected, 80)})"


def _schema_problems(config: dict, schema: dict) -> list[str]:
    problems = []
    for error in _Validator(schema).iter_errors(config):
        problems.append((_key(error.absolute_path), _describe(error, schema)))
        if len(problems) > MAX_PROBLEMS:
            break
    return [text for _, text in sorted(problems)]


def validate(
    config: dict,
    schema_path: str | os.PathLike = SCHEMA,
    files=(),
    base_dir: str | os.PathLike | None = None,
) -> dict:
    """Raise :class:`ConfigError` listing every problem; return ``config`` unchanged if valid.

    ``files`` are the config files ``config`` was read from (checked by :func:`check_files`);
    ``base_dir`` is where relative paths in the config are resolved, as the jobs resolve them
    (default: the working directory)."""
    with open(schema_path) as fh:
        schema = yaml.safe_load(fh)
    problems = check_files(files)
    if not isinstance(config, dict):
        problems.append(f"<top level>: expected a mapping of keys, got {short(config)}")
    else:
        problems += _size_problems(config)
    if not problems:
        problems = _schema_problems(config, schema)
    if not problems:
        problems = _cross_checks(config) + meaning_checks(config, Path(base_dir) if base_dir else Path.cwd())
    if problems:
        listed = [_clip(p, 3 * SHORT) for p in problems[:MAX_PROBLEMS]]
        if len(problems) > MAX_PROBLEMS:
            listed.append(f"... and {len(problems) - MAX_PROBLEMS} more")
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(listed))
    return config


# --- config files ------------------------------------------------------------------------------------


def _json_duplicates(text: str) -> list[str] | None:
    """Duplicate keys of a JSON document, or None when ``text`` is not JSON."""
    found: list[str] = []

    def pairs(items):
        seen = set()
        for k, _ in items:
            if k in seen:
                found.append(k)
            seen.add(k)
        return dict(items)

    try:
        json.loads(text, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return None
    return found


def _yaml_duplicates(node, path: tuple = ()) -> list[tuple[str, int, int]]:
    """(dotted key, first line, repeated line) of keys given twice in one mapping, walking the
    composed node graph once per node (aliases are not expanded)."""
    found = []
    seen_nodes: set[int] = set()
    stack = [(node, path)]
    while stack:
        node, path = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            lines: dict[str, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    stack.append((value_node, path))
                    continue
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                name, line = key_node.value, key_node.start_mark.line + 1
                if name in lines:
                    found.append((_key((*path, name)), lines[name], line))
                else:
                    lines[name] = line
                stack.append((value_node, (*path, name)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, (*path, i)) for i, child in enumerate(node.value))
    return sorted(found, key=lambda f: f[2])


def check_files(paths) -> list[str]:
    """Problems of the config files themselves: missing, too large, not YAML/JSON, or a key
    given twice in one mapping (YAML and JSON keep the last value silently)."""
    problems = []
    for path in paths:
        path = Path(path)
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                problems.append(f"{path}: {size:,} bytes; a config file is at most {MAX_FILE_BYTES:,} bytes")
                continue
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            problems.append(f"config file {path} does not exist")
            continue
        except (OSError, UnicodeDecodeError) as e:
            problems.append(f"{path}: cannot be read ({_clip(str(e))})")
            continue
        duplicates = _json_duplicates(text)
        if duplicates is not None:
            problems += [f"{path}: key {short(k, 60)} is given twice in one object; keep one" for k in duplicates]
            continue
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problems.append(f"{path}: not valid YAML{where} ({_clip(str(getattr(e, 'problem', None) or e), 120)})")
            continue
        for key, first, again in _yaml_duplicates(node) if node is not None else []:
            problems.append(
                f"{path}:{again}: duplicate key {key} (first on line {first}); YAML would silently keep "
                "the last value: keep one"
            )
    return problems


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
    problems += _precision_problems(cfg)
    rl = cfg["rl"]
    if rl["from"]:
        unknown = sorted(set(rl["from"]) - set(sft["checkpoints"]))
        if unknown:
            problems.append(f"rl.from: steps {unknown} are not in sft.checkpoints {sorted(sft['checkpoints'])}")
    sweep = cfg.get("rl_sweep")
    from sftrl.ppo_config import PPOConfig

    # rl: itself, then each sweep variant's overrides on top of it
    base = {k: v for k, v in rl.items() if k not in ("algorithm", "from", "num_generations")}
    runs = {"rl": {}} | {f"rl_sweep.variants.{n}": o for n, o in sweep_variants(cfg).items()}
    for key, overrides in runs.items():
        try:
            PPOConfig.from_dict({**base, **overrides})
        except ValueError as err:
            problems.append(f"{key}: {err}")
    if sweep:
        unknown = sorted(set(sweep["from"]) - set(sft["checkpoints"]))
        if unknown:
            problems.append(f"rl_sweep.from: steps {unknown} are not in sft.checkpoints {sorted(sft['checkpoints'])}")
        names = [v["name"] for v in sweep["variants"]]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            problems.append(f"rl_sweep.variants: the names {twice} are given more than once; each names its own runs")
    return problems


def _precision_problems(cfg: dict) -> list[str]:
    """Training in bfloat16/float16 weights loses Adam's small steps (lr 1e-6 is below bf16's
    resolution) unless DeepSpeed keeps float32 master weights, which it does only for a job
    launched on several GPUs with ``distributed.deepspeed.<kind>`` set."""
    dtype = cfg["model"]["dtype"]
    if dtype not in ("bfloat16", "float16"):
        return []
    problems = []
    from sftrl.launch import gpu_count, job_resources

    for kind in ("sft", "rl"):
        gpus = gpu_count(job_resources(cfg["resources"], kind))
        deepspeed = cfg["distributed"]["deepspeed"].get(kind)
        if gpus < 2 or not deepspeed:
            why = f"resources.{kind}.gpu is {gpus}" if gpus < 2 else f"distributed.deepspeed.{kind} is null"
            problems.append(
                f"model.dtype: {dtype} weights would train {kind} without float32 master weights ({why}, so "
                "no DeepSpeed), and Adam's steps at small learning rates round away; use auto (float32 "
                f"weights, {dtype} compute on GPUs) or DeepSpeed on 2+ GPUs"
            )
    return problems


# --- checks of meaning ---------------------------------------------------------------------------------
# Values that pass the schema but would fail (or misbehave) in a job: checked here, by name.


def results_dir(study: str, base_dir: Path) -> Path:
    """``results/<study>`` under ``base_dir``; ValueError unless it is a directory right under
    ``results/`` (no ``.``, ``..``, separators or newlines can move it)."""
    if not isinstance(study, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", study) or study in (".", ".."):
        raise ValueError(f"study: {short(study)} is not a plain directory name")
    results = base_dir / "results"
    path = Path(os.path.normpath(results / study))
    if path.parent != Path(os.path.normpath(results)) or path.name != study:
        raise ValueError(f"study: {short(study)} would write outside {results}")
    return path


# --- keys that belong to one model source ---------------------------------------------------------
# config.yaml (the tiny study) is always read first and a study file given with --configfile is
# merged over it, key by key. These keys only mean something for the tiny source; a study of local
# weights never sees them (strip_tiny_only), so none of its values can come from the tiny study.
TINY_ONLY = ("model.tiny", "base", "data.pretrain_size", "data.pretrain_feedback", "data.pretrain_wrapped")


def prepare(cfg: dict, overrides: dict, files=(), schema_path: str | os.PathLike = SCHEMA) -> dict:
    """The study's effective config, in place, as the workflow uses it: each resource group a
    study file (or ``--config``) sets replaces the default's whole (:func:`replace_resource_groups`;
    ``overrides`` are the values Snakemake merged over config.yaml), the result checked
    (:func:`validate`; ConfigError), then the tiny source's keys dropped for local weights
    (:func:`strip_tiny_only`)."""
    replace_resource_groups(cfg, overrides)
    seeds_from_command_line(cfg)
    validate(cfg, schema_path, files=files)
    return strip_tiny_only(cfg)


def seeds_from_command_line(cfg: dict) -> dict:
    """``--config seeds=[0,1,2]`` as integers (in place): Snakemake reads a list given on the
    command line as strings (a sign included, so ``seeds=[-1]`` is named as out of range, not as
    text). Anything else is left for :func:`validate` to name."""
    seeds = cfg.get("seeds") if isinstance(cfg, dict) else None
    if isinstance(seeds, list) and all(isinstance(s, str) and re.fullmatch(r"[+-]?\d+", s.strip()) for s in seeds):
        cfg["seeds"] = [int(s) for s in seeds]
    return cfg


def replace_resource_groups(cfg: dict, overrides: dict) -> dict:
    """Give each ``resources.<group>`` of ``overrides`` (the study files and ``--config`` values,
    which Snakemake merged over config.yaml key by key) back its own keys only (in place): a group
    a study sets replaces the default study's group whole, so a GPU job never inherits the tiny
    study's ``cpus_per_task`` or any other key its study did not ask for."""
    groups = overrides.get("resources") if isinstance(overrides, dict) else None
    if isinstance(groups, dict) and isinstance(cfg.get("resources"), dict):
        for group, values in groups.items():
            if isinstance(values, dict):
                cfg["resources"][group] = dict(values)
    return cfg


def strip_tiny_only(cfg: dict) -> dict:
    """Remove the :data:`TINY_ONLY` keys from ``cfg`` (in place) unless its model source is tiny."""
    if cfg.get("model", {}).get("source") == "tiny":
        return cfg
    for key in TINY_ONLY:
        *parents, leaf = key.split(".")
        node = cfg
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return cfg


def model_depth(cfg: dict) -> int | None:
    """Decoder layers of the study's model: ``model.tiny.num_layers``, or ``num_hidden_layers``
    from ``model.path``'s config.json when it is readable here; None when unknown (a dry-run on
    a machine without the weights)."""
    model = cfg["model"]
    if model["source"] == "tiny":
        return model.get("tiny", {}).get("num_layers")
    try:
        conf = json.loads((Path(model["path"]) / "config.json").read_text())
        conf = conf.get("text_config", conf)  # Llama-3.2-Vision: the language model's depth
        depth = conf["num_hidden_layers"]
        return depth if isinstance(depth, int) and depth > 0 else None
    except (OSError, TypeError, KeyError, ValueError, AttributeError):
        return None


def layer_reset_problems(ranges: list, depth: int | None, key: str = "edits.layer_reset") -> list[str]:
    """Each ``[from, to)`` must be a non-empty range of fractions and, where the depth is known,
    hold at least one layer; no two ranges may give the same name."""
    problems, names = [], {}
    for i, (lo, hi) in enumerate(ranges):
        name = layers_name(lo, hi)
        if lo >= hi:
            problems.append(f"{key}[{i}]: {short([lo, hi])} is an empty range; write [from, to) with from < to")
        elif not re.fullmatch(LAYERS, name):
            problems.append(f"{key}[{i}]: {short([lo, hi])} would be named {name!r}; use fractions of at least 0.0001")
        elif name in names:
            problems.append(f"{key}[{i}]: {short([lo, hi])} is named {name!r} like item {names[name]}")
        elif depth is not None and not layer_range(lo, hi, depth):
            problems.append(
                f"{key}[{i}]: {short([lo, hi])} holds no layer of the model's {depth} "
                f"(each layer is {1 / depth:.3g} of the depth); widen the range"
            )
        names.setdefault(name, i)
    return problems


def _edit_problems(cfg: dict) -> list[str]:
    edits = cfg["edits"]
    problems = []
    models = study_models(cfg)
    for key, special in (("donor", "best-ood"), ("target", "last")):
        name = edits[key]
        if name != special and name not in models:
            problems.append(
                f"edits.{key}: {short(name)} is not a model of this study; expected {special} or one of "
                + _clip(", ".join(models), 2 * SHORT)
            )
    problems += layer_reset_problems(edits["layer_reset"], model_depth(cfg))  # depth: None if unreadable
    for kind in ("uv_merge", "sigma_swap", "triplet_swap"):
        names: dict[str, int] = {}
        for i, (top, bottom) in enumerate(edits[kind]):
            name = band_name(top, bottom)
            if not re.fullmatch(BAND, name):
                problems.append(
                    f"edits.{kind}[{i}]: {short([top, bottom])} would be named {name!r}; use fractions "
                    "of at least 0.0001 (or 0)"
                )
            elif name in names:
                problems.append(
                    f"edits.{kind}[{i}]: {short([top, bottom])} is named {name!r} like item {names[name]}; "
                    "make the fractions differ in their first 6 digits"
                )
            names.setdefault(name, i)
    return problems


def _rl_setting(cfg: dict, name: str):
    from dataclasses import fields

    from sftrl.ppo_config import PPOConfig

    if name in cfg["rl"]:
        return cfg["rl"][name]
    return next(f.default for f in fields(PPOConfig) if f.name == name)


def positions_needed(cfg: dict) -> dict[str, tuple[int, str]]:
    """Fewest positions a sequence of the tiny model needs, per use, with the sum in words.

    The tiny tokenizer has one token per character, plus a BOS. An SFT example is the longest
    prompt and the longest solver formula and EOS; an episode is the prompt, then ``turns``
    answers of up to ``max_new_tokens`` with a feedback turn between two of them. These are
    lower bounds: a config below them cannot work, one above them may still truncate."""
    from sftrl.prompts import get_template

    prompt = 1 + len(get_template(cfg["model"]["template"]).prompt(["10"] * 4, "ood"))
    needs = {
        "sft": (
            prompt + LONGEST_SOLUTION_CHARS + 1,
            f"{prompt} (BOS and the longest prompt) + {LONGEST_SOLUTION_CHARS} (the longest formula) + 1 (EOS)",
        ),
    }

    def episode(turns: int, new_tokens: int, where: str) -> tuple[int, str]:
        total = prompt + turns * new_tokens + (turns - 1) * MIN_FEEDBACK_TOKENS
        words = f"{prompt} (BOS and the longest prompt) + {turns} x {new_tokens} ({where}.turns x "
        words += f"{where}.max_new_tokens)"
        if turns > 1:
            words += f" + {turns - 1} x {MIN_FEEDBACK_TOKENS} (feedback turns, at least)"
        return total, words

    needs["eval"] = episode(cfg["eval"]["turns"], cfg["eval"]["max_new_tokens"], "eval")
    if cfg.get("rl"):
        single = cfg["rl"]["algorithm"] == "grpo"
        needs["rl"] = episode(1 if single else _rl_setting(cfg, "turns"), _rl_setting(cfg, "max_new_tokens"), "rl")
        for name, overrides in sweep_variants(cfg).items():  # each variant's keys override rl:
            turns = 1 if single else overrides.get("turns", _rl_setting(cfg, "turns"))
            new_tokens = overrides.get("max_new_tokens", _rl_setting(cfg, "max_new_tokens"))
            if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (turns, new_tokens)):
                needs[f"rl_sweep.variants.{name}"] = episode(turns, new_tokens, "rl")  # bad types: PPOConfig says
    return needs


def tiny_parameters(arch: dict, vocab: int = 64) -> int:
    """Parameters of the tiny Llama (tied embeddings): embeddings, then per layer attention
    (4 h^2), MLP (3 h i) and two norms, then the final norm."""
    h, i, layers = arch["hidden_size"], arch["intermediate_size"], arch["num_layers"]
    return vocab * h + layers * (4 * h * h + 3 * h * i + 2 * h) + h


def _tiny_problems(cfg: dict) -> list[str]:
    model = cfg["model"]
    if model["source"] != "tiny" or "tiny" not in model:
        return []
    arch, problems = model["tiny"], []
    hidden, heads = arch["hidden_size"], arch["num_heads"]
    if hidden % heads:
        problems.append(
            f"model.tiny.num_heads: {heads} heads do not divide model.tiny.hidden_size ({hidden}); "
            "each head takes hidden_size / num_heads channels"
        )
    elif (hidden // heads) % 2:
        problems.append(
            f"model.tiny.num_heads: {heads} heads of {hidden // heads} channels; rotary position "
            "embeddings need an even number of channels per head"
        )
    params = tiny_parameters(arch)
    if params > MAX_TINY_PARAMETERS:
        problems.append(
            f"model.tiny: {params:,} parameters, more than the tiny model's limit of {MAX_TINY_PARAMETERS:,} "
            "(it is built and trained on CPUs); lower hidden_size, intermediate_size or num_layers"
        )
    positions = arch["max_position_embeddings"]
    max_length = cfg["sft"].get("max_length")
    if max_length is not None and max_length > positions:
        problems.append(
            f"sft.max_length: {max_length} tokens, more than the tiny model's {positions} positions "
            "(model.tiny.max_position_embeddings); null uses the model's own"
        )
    if model["template"] == "compact":
        for use, (need, words) in positions_needed(cfg).items():
            if use == "sft" and max_length is not None and max_length < need:
                problems.append(f"sft.max_length: {max_length} tokens cannot hold an SFT example of {need} = {words}")
            if positions < need:
                problems.append(
                    f"model.tiny.max_position_embeddings: {positions} positions cannot hold an {use} "
                    f"sequence of {need} tokens = {words}"
                )
    return problems


def _file_problems(cfg: dict, base_dir: Path) -> list[str]:
    problems = []
    study = cfg["study"]
    try:
        out = results_dir(study, base_dir)
    except ValueError as e:
        return [str(e)]
    distributed = cfg["distributed"]
    for kind in ("sft", "rl"):
        name = distributed["deepspeed"][kind]
        if name is None:
            continue
        key = f"distributed.deepspeed.{kind}"
        if distributed["launcher"] != "accelerate":
            problems.append(f"{key}: DeepSpeed needs distributed.launcher: accelerate (torchrun runs plain DDP)")
        path = Path(name) if os.path.isabs(name) else base_dir / name
        if not os.path.isabs(name) and not os.path.lexists(path):
            path = SCHEMA.parents[1] / name  # the workflow resolves it against the repository too
        if "\0" in name or not path.is_file():
            what = "is not a file" if os.path.lexists(path) else "does not exist"
            problems.append(
                f"{key}: {short(name)} {what} (looked for {_clip(str(path))}); expected a DeepSpeed JSON config"
            )
            continue
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ValueError(f"more than {MAX_FILE_BYTES:,} bytes")
            if not isinstance(json.loads(path.read_text()), dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError, RecursionError) as e:
            problems.append(f"{key}: {_clip(str(path))} is not a DeepSpeed JSON config ({_clip(str(e), 120)})")
    model_path = cfg["model"].get("path")
    if cfg["model"]["source"] == "local" and model_path:
        problems += model_path_problems(model_path, base_dir, out, study)
    return problems


def model_path_problems(model_path: str, base_dir: Path, out: Path, study: str) -> list[str]:
    """``model.path`` checked when the DAG is built, so a dry-run or a cluster submission stops at
    once, before any job: a checkpoint directory (:func:`checkpoint_dir_problems`) seen from
    ``base_dir``, not inside this study's results ``out``."""
    if "\0" in model_path:
        return ["model.path: contains a NUL character"]
    path = Path(model_path).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if path.is_dir() and path.resolve().is_relative_to(out.resolve()):
        return [
            f"model.path: {short(model_path)} is inside results/{study}/, which this study writes; "
            "copy the checkpoint elsewhere"
        ]
    from sftrl.checkpoints import checkpoint_dir_problems

    seen = f" (seen from {short(str(base_dir))})" if not path.exists() else ""
    return checkpoint_dir_problems(path, f"model.path: {short(model_path)}", seen)


MAX_RUNTIME_MINUTES = 525_600  # a year, as the schema's limit of an integer runtime
_TIMESPAN = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]+)\s*")
_MINUTES = {
    "s": 1 / 60,
    "sec": 1 / 60,
    "m": 1,
    "min": 1,
    "h": 60,
    "hour": 60,
    "d": 1440,
    "day": 1440,
    "w": 10080,
    "week": 10080,
}


def runtime_minutes(value: int | str) -> float:
    """A ``runtime`` resource in minutes: an integer, or a time span such as ``90m``, ``4h``, ``2d``
    (the units Snakemake parses; the schema checks the syntax)."""
    if isinstance(value, int):
        return value
    number, unit = _TIMESPAN.fullmatch(value).groups()
    unit = unit.removesuffix("s") if unit not in ("s", "secs") else "s"
    unit = {"second": "s", "minute": "min", "sec": "s"}.get(unit, unit)
    return float(number) * _MINUTES[unit]


def _resource_problems(cfg: dict) -> list[str]:
    problems = []
    for group, res in cfg["resources"].items():
        key = f"resources.{group}"
        if "runtime" in res and not 1 <= runtime_minutes(res["runtime"]) <= MAX_RUNTIME_MINUTES:
            problems.append(f"{key}.runtime: {short(res['runtime'])} is not between 1 minute and a year")
        if res.get("gpu") and str(res.get("gres", "")).startswith("gpu"):
            problems.append(
                f"{key}: gpu and gres {short(res['gres'])} both ask for GPUs (sbatch --gpus and --gres); "
                "give the count as gpu (and the type as gpu_model)"
            )
    return problems


def meaning_checks(cfg: dict, base_dir: Path) -> list[str]:
    """Checks of meaning on a schema-valid config (``base_dir``: where relative paths resolve)."""
    return _file_problems(cfg, base_dir) + _tiny_problems(cfg) + _edit_problems(cfg) + _resource_problems(cfg)


def load(path: str | os.PathLike) -> dict:
    """Read and validate a YAML config file (duplicate keys and its size checked first)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    problems = check_files([path])
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
    with open(path) as fh:
        cfg = yaml.safe_load(fh)
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return validate(cfg)
