"""The `sftrl` command: the study's weight edits and spectral comparison on any compatible
Hugging Face checkpoints, outside the workflow.

    sftrl edit uv-merge --donor DIR --target DIR --top 0.2 [--bottom 0] [--types all] --out DIR
    sftrl edit sigma-swap | triplet-swap   (same options)
    sftrl edit layer-reset --donor DIR --target DIR --layers 0-3 [--no-embeddings] --out DIR
    sftrl spectrum DIR_A DIR_B --out FILE.parquet [--types q,k,v,o,gate,up,down] [--k-frac F | --k N] [--band F]
    sftrl evaluate DIR [--template compact|paper] [--splits id,ood] [--hands 234] [--turns 1] [--out DIR]
    sftrl chat-model DIR [--seed 0]   (the rehearsal's small Qwen2-style chat model, built here)
    sftrl profile install [--dest DIR] [--force]   (the SLURM profile, for `snakemake --profile slurm`)

Every argument is checked before anything is loaded: numbers against their ranges, the device,
the input checkpoints (their headers), and the outputs (not an existing directory or a dangling
link, in a writable place, not inside an input). Bad input of any kind prints one line to stderr
naming the argument or the file, and exits with status 2; nothing is left behind.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from sftrl.checkpoints import INDEX_FILE, Checkpoint, CheckpointError
from sftrl.edits import METHODS, edit_checkpoint, layer_reset, parse_layers
from sftrl.spectrum import MATRIX_TYPES, compare, index_path, parse_types, write_spectrum

# Bounds of the numeric options (the study's values are well inside them).
MAX_HANDS = 100_000  # hands per split (as data.eval_size)
MAX_TURNS = 10  # attempts per hand (as eval.turns)
MAX_BATCH = 65_536  # hands generated together (as eval.batch_size)
MAX_NEW_TOKENS = 32_768  # tokens per answer (as eval.max_new_tokens)
MAX_SEED = 2**31 - 1
MAX_LAYER = 9_999  # layer ids of --layers
MAX_MESSAGE = 500  # characters of an error line
DEVICE_HELP = "torch device for the SVDs: cpu, cuda or cuda:N (default: cuda if available)"


class UsageError(Exception):
    """Malformed command line (raised instead of argparse's usage dump and exit)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text}")
    return value


def _positive_fraction(text: str) -> float:
    value = _fraction(text)
    if value == 0.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text}")
    return value


def _band(text: str) -> float:
    value = _fraction(text)
    if value > 0.5:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 0.5], got {text}")
    return value


def _integer(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {text[:40]}")
        return value

    return parse


def _types(text: str):
    try:
        return parse_types(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _layers(text: str) -> list[int]:
    # Bound every id before parse_layers expands a range ("0-99999999" would be a list of 10^8).
    for part in text.split(","):
        for number in part.strip().split("-"):
            if number.strip().isdigit() and int(number) > MAX_LAYER:
                raise argparse.ArgumentTypeError(f"layer ids go up to {MAX_LAYER}, got {part.strip()[:40]!r}")
    try:
        return parse_layers(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _device(text: str) -> str:
    """A torch device that exists here: cpu, cuda, cuda:N (or mps)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text[:40]!r}") from None
    if device.type == "cpu":
        return text
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: no CUDA device is available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return text
    if device.type == "mps" and torch.backends.mps.is_available():
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: expected cpu, cuda or cuda:N")


def _splits(text: str) -> list[str]:
    from sftrl.data import SPLITS

    splits = [s.strip() for s in text.split(",") if s.strip()]
    if not splits or any(s not in SPLITS for s in splits) or len(set(splits)) != len(splits):
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(SPLITS)}; got {text[:40]!r}")
    return splits


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sftrl", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    edit = commands.add_parser("edit", help="write an edited checkpoint (docs/study.md §8)")
    methods = edit.add_subparsers(dest="method", required=True, parser_class=_Parser)
    for method, help_text in zip(
        METHODS,
        (
            "donor's singular directions (U, V) in the top/bottom bands, target's singular values (docs/study.md §8)",
            "donor's singular values in the top/bottom bands, target's directions (docs/study.md §8)",
            "donor's U, S and V in the top/bottom bands (docs/study.md §8)",
        ),
        strict=True,
    ):
        p = methods.add_parser(method, help=help_text)
        _add_pair(p)
        p.add_argument("--top", type=_fraction, required=True, help="fraction of min(rows, cols) from the top")
        p.add_argument("--bottom", type=_fraction, default=0.0, help="fraction from the bottom (default 0)")
        p.add_argument(
            "--types",
            type=_types,
            default="all",
            help=f"'all' (every 2-D tensor, default) or a comma list of {','.join(MATRIX_TYPES)}",
        )
        p.add_argument("--device", type=_device, default=None, help=DEVICE_HELP)
    p = methods.add_parser("layer-reset", help="donor's tensors for some decoder layers (docs/study.md §8)")
    _add_pair(p)
    p.add_argument("--layers", type=_layers, required=True, help="layer ids, e.g. 0-3 or 0-3,8")
    p.add_argument(
        "--no-embeddings",
        dest="embeddings",
        action="store_false",
        help="keep the target's embeddings and LM head (the study replaced them)",
    )

    spectrum = commands.add_parser("spectrum", help="compare the spectra of two checkpoints (docs/study.md §7)")
    spectrum.add_argument("a", help="reference checkpoint directory (or SVD file)")
    spectrum.add_argument("b", help="compared checkpoint directory (or SVD file)")
    spectrum.add_argument(
        "--out", required=True, help="summary FILE.parquet; per-index table goes to FILE.index.parquet"
    )
    spectrum.add_argument("--types", type=_types, default=MATRIX_TYPES, help="default: " + ",".join(MATRIX_TYPES))
    k = spectrum.add_mutually_exclusive_group()
    k.add_argument(
        "--k-frac", type=_positive_fraction, default=0.2, help="top-k subspace as a fraction of min(rows, cols)"
    )
    k.add_argument("--k", type=_integer(1, 2**31 - 1), default=None, help="top-k subspace size (absolute)")
    spectrum.add_argument("--band", type=_band, default=0.1, help="head and tail fraction for band summaries")
    spectrum.add_argument("--device", type=_device, default=None, help=DEVICE_HELP)

    evaluate = commands.add_parser(
        "evaluate", help="play fixed ID/OOD hands with a checkpoint (the study's multi-turn verifier)"
    )
    evaluate.add_argument("model", help="checkpoint directory")
    evaluate.add_argument("--template", choices=("compact", "paper"), default="compact")
    evaluate.add_argument("--splits", type=_splits, default="id,ood", help="comma-separated: id, ood")
    evaluate.add_argument(
        "--hands", type=_integer(1, MAX_HANDS), default=234, help=f"hands per split, 1-{MAX_HANDS} (the study: 234)"
    )
    evaluate.add_argument("--seed", type=_integer(0, MAX_SEED), default=42, help="seed of the hands (the study: 42)")
    evaluate.add_argument(
        "--turns", type=_integer(1, MAX_TURNS), default=1, help=f"attempts per hand, 1-{MAX_TURNS} (the study: 5)"
    )
    evaluate.add_argument("--decoding", choices=("greedy", "model"), default="greedy")
    evaluate.add_argument("--max-new-tokens", type=_integer(1, MAX_NEW_TOKENS), default=24)
    evaluate.add_argument("--batch-size", type=_integer(1, MAX_BATCH), default=256)
    evaluate.add_argument("--arithmetic", choices=("exact", "float"), default="exact")
    evaluate.add_argument("--out", help="directory for <split>.parquet and <split>.json (optional)")

    chat = commands.add_parser(
        "chat-model",
        help="build the rehearsal's small chat model (Qwen2 architecture, BPE tokenizer, chat template)",
    )
    chat.add_argument("out", help="output checkpoint directory (must not exist), e.g. results/rehearsal-model")
    chat.add_argument("--seed", type=_integer(0, MAX_SEED), default=0, help="seed of the weights and corpus")

    profile = commands.add_parser("profile", help="Snakemake profiles of this project")
    actions = profile.add_subparsers(dest="action", required=True, parser_class=_Parser)
    install = actions.add_parser(
        "install",
        help="copy profiles/slurm to where Snakemake looks for named profiles, so that "
        "`snakemake --profile slurm` finds it",
    )
    install.add_argument(
        "--dest",
        help="profile directory to write (default: $XDG_CONFIG_HOME/snakemake/slurm, "
        "XDG_CONFIG_HOME defaulting to ~/.config)",
    )
    install.add_argument("--force", action="store_true", help="replace a different profile already there")
    return parser


def _add_pair(p: argparse.ArgumentParser) -> None:
    p.add_argument("--donor", required=True, help="checkpoint the weights come from")
    p.add_argument("--target", required=True, help="checkpoint being repaired (config and tokenizer come from it)")
    p.add_argument("--out", required=True, help="output checkpoint directory (must not exist)")


# --- outputs, checked before any work ------------------------------------------------------------


def _writable_place(path: Path, option: str) -> None:
    """``path`` can be created: its nearest existing ancestor is a writable directory."""
    parent = Path(os.path.abspath(path)).parent
    while not os.path.lexists(parent):
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"sftrl: error: {option} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"sftrl: error: {option} {path}: {parent} is not writable")


def _not_inside(path: Path, inputs, option: str) -> None:
    out = Path(os.path.realpath(path))
    for given in inputs:
        source = Path(os.path.realpath(given))
        if out == source or source in out.parents:
            raise UsageError(f"sftrl: error: {option} {path}: inside the input {given}; write elsewhere")


def _new_directory(path: Path, option: str, inputs) -> None:
    """An output directory: absent (or an empty directory), creatable, not inside an input."""
    if path.is_symlink() or (path.exists() and not (path.is_dir() and not any(path.iterdir()))):
        raise UsageError(f"sftrl: error: {option} {path}: already exists; remove it or choose another path")
    _not_inside(path, inputs, option)
    _writable_place(path, option)


def _output_file(path: Path, option: str, inputs) -> None:
    """An output file: not a directory or a dangling link, creatable, not an input."""
    if path.is_dir():
        raise UsageError(f"sftrl: error: {option} {path}: is a directory; expected a file path")
    if path.is_symlink() and not path.exists():
        raise UsageError(f"sftrl: error: {option} {path}: a dangling symbolic link")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"sftrl: error: {option} {path}: not writable")
    _not_inside(path, inputs, option)
    _writable_place(path, option)


def _output_directory(path: Path, option: str, inputs, files) -> None:
    """A directory that receives ``files`` (it may exist; they are replaced)."""
    if path.is_symlink() and not path.exists():
        raise UsageError(f"sftrl: error: {option} {path}: a dangling symbolic link")
    if path.exists() and not path.is_dir():
        raise UsageError(f"sftrl: error: {option} {path}: exists and is not a directory")
    _not_inside(path, inputs, option)
    for name in files:
        _output_file(path / name, option, inputs)


# --- commands ----------------------------------------------------------------------------------------


def _run_edit(args) -> None:
    out = Path(args.out)
    _new_directory(out, "--out", [args.donor, args.target])
    if args.method == "layer-reset":
        report = layer_reset(args.target, args.donor, out, args.layers, embeddings=args.embeddings)
    else:
        report = edit_checkpoint(
            args.target, args.donor, out, args.method, args.top, args.bottom, args.types, device=args.device
        )
    print(report.summary())


def _run_spectrum(args) -> None:
    out = Path(args.out)
    if out.suffix != ".parquet":
        raise UsageError(f"sftrl spectrum: error: --out must end in .parquet, got {args.out[:200]}")
    for path in (out, index_path(out)):
        _output_file(path, "--out", [args.a, args.b])
    summary, per_index = compare(
        args.a, args.b, args.types, k_frac=args.k_frac, k=args.k, band=args.band, device=args.device
    )
    write_spectrum(summary, per_index, out)
    print(f"wrote {out} ({summary.height} rows) and {index_path(out)} ({per_index.height} rows)")


def _finite(value):
    """NaN and infinities as None (JSON null), so every printed line is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _run_evaluate(args) -> None:
    from sftrl.atomic import write_parquet, write_text
    from sftrl.data import make_eval
    from sftrl.evaluate import GenerationSettings, evaluate_model
    from sftrl.models import check_checkpoint_dir

    out = Path(args.out) if args.out else None
    if out is not None:
        files = [f"{s}.{ext}" for s in args.splits for ext in ("parquet", "json")]
        _output_directory(out, "--out", [args.model], files)
    check_checkpoint_dir(args.model, key="model")
    if any(Path(args.model).glob("*.safetensors")) or (Path(args.model) / INDEX_FILE).exists():
        Checkpoint(args.model)  # every header readable: truncated or malformed weights fail here
    hands = {s: make_eval(s, args.hands, args.seed, args.template) for s in args.splits}
    settings = GenerationSettings(args.max_new_tokens, args.batch_size, args.decoding, args.seed)
    try:
        results = evaluate_model(args.model, hands, args.template, args.turns, settings, args.arithmetic)
    except (OSError, RuntimeError, ValueError, KeyError) as e:  # e.g. transformers on a checkpoint it cannot load
        raise CheckpointError(f"{args.model}: evaluation failed ({type(e).__name__}: {e})") from None
    for split, (records, summary) in results.items():
        line = json.dumps(_finite({"split": split, **summary}), allow_nan=False)
        print(line)
        if out is not None:
            write_parquet(records, out / f"{split}.parquet")
            write_text(json.dumps(json.loads(line), indent=2) + "\n", out / f"{split}.json")


def _run_chat_model(args) -> None:
    from sftrl.chatmodel import build_chat_model

    out = Path(args.out)
    _new_directory(out, "DIR", [])
    build_chat_model(out, seed=args.seed)


def _run_profile(args) -> None:
    from sftrl.profile import install_profile

    print(install_profile(args.dest, force=args.force))


HANDLERS = {
    "edit": _run_edit,
    "spectrum": _run_spectrum,
    "evaluate": _run_evaluate,
    "chat-model": _run_chat_model,
    "profile": _run_profile,
}


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        HANDLERS[args.command](args)
    except UsageError as e:
        print(_one_line(e), file=sys.stderr)
        return 2
    except (CheckpointError, ValueError, OSError) as e:  # OSError: files that vanish, fill up or refuse
        print(_one_line(f"sftrl: error: {e}"), file=sys.stderr)
        return 2
    except RuntimeError as e:  # torch on hostile weights, e.g. an SVD of a matrix holding NaN
        print(_one_line(f"sftrl: error: {type(e).__name__}: {e}"), file=sys.stderr)
        return 2
    except MemoryError:
        print("sftrl: error: out of memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sftrl: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
