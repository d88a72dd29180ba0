"""The `sftrl` command: the study's weight edits and spectral comparison on any compatible
Hugging Face checkpoints, outside the workflow.

    sftrl edit uv-merge --donor DIR --target DIR --top 0.2 [--bottom 0] [--types all] --out DIR
    sftrl edit sigma-swap | triplet-swap   (same options)
    sftrl edit layer-reset --donor DIR --target DIR --layers 0-3 [--no-embeddings] --out DIR
    sftrl spectrum DIR_A DIR_B --out FILE.parquet [--types q,k,v,o,gate,up,down] [--k-frac F | --k N] [--band F]
    sftrl evaluate DIR [--template compact|paper] [--splits id,ood] [--hands 234] [--turns 1] [--out DIR]

Bad input (not a checkpoint, incompatible checkpoints, malformed arguments) prints one line to
stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys

from sftrl.checkpoints import CheckpointError
from sftrl.edits import METHODS, edit_checkpoint, layer_reset, parse_layers
from sftrl.spectrum import MATRIX_TYPES, compare, index_path, parse_types, write_spectrum


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
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text}")
    return value


def _types(text: str):
    try:
        return parse_types(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _layers(text: str) -> list[int]:
    try:
        return parse_layers(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sftrl", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    edit = commands.add_parser("edit", help="write an edited checkpoint (PAPER.md §7)")
    methods = edit.add_subparsers(dest="method", required=True, parser_class=_Parser)
    for method, help_text in zip(
        METHODS,
        (
            "donor's singular directions (U, V) in the top/bottom bands, target's singular values (§7.2)",
            "donor's singular values in the top/bottom bands, target's directions (§7.3)",
            "donor's U, S and V in the top/bottom bands (§7.1)",
        ),
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
        p.add_argument("--device", default=None, help="torch device for the SVDs (default: cuda if available)")
    p = methods.add_parser("layer-reset", help="donor's tensors for some decoder layers (§7.4)")
    _add_pair(p)
    p.add_argument("--layers", type=_layers, required=True, help="layer ids, e.g. 0-3 or 0-3,8")
    p.add_argument(
        "--no-embeddings",
        dest="embeddings",
        action="store_false",
        help="keep the target's embeddings and LM head (the study replaced them)",
    )

    spectrum = commands.add_parser("spectrum", help="compare the spectra of two checkpoints (PAPER.md §6)")
    spectrum.add_argument("a", help="reference checkpoint directory (or SVD file)")
    spectrum.add_argument("b", help="compared checkpoint directory (or SVD file)")
    spectrum.add_argument(
        "--out", required=True, help="summary FILE.parquet; per-index table goes to FILE.index.parquet"
    )
    spectrum.add_argument("--types", type=_types, default=MATRIX_TYPES, help="default: " + ",".join(MATRIX_TYPES))
    k = spectrum.add_mutually_exclusive_group()
    k.add_argument("--k-frac", type=_fraction, default=0.2, help="top-k subspace as a fraction of min(rows, cols)")
    k.add_argument("--k", type=int, default=None, help="top-k subspace size (absolute)")
    spectrum.add_argument("--band", type=float, default=0.1, help="head and tail fraction for band summaries")
    spectrum.add_argument("--device", default=None, help="torch device for the SVDs (default: cuda if available)")

    evaluate = commands.add_parser(
        "evaluate", help="play fixed ID/OOD hands with a checkpoint (the study's multi-turn verifier)"
    )
    evaluate.add_argument("model", help="checkpoint directory")
    evaluate.add_argument("--template", choices=("compact", "paper"), default="compact")
    evaluate.add_argument("--splits", default="id,ood", help="comma-separated: id, ood")
    evaluate.add_argument("--hands", type=int, default=234, help="hands per split (the study: 234)")
    evaluate.add_argument("--seed", type=int, default=42, help="seed of the hands (the study: 42)")
    evaluate.add_argument("--turns", type=int, default=1, help="attempts per hand (the study: 5)")
    evaluate.add_argument("--decoding", choices=("greedy", "model"), default="greedy")
    evaluate.add_argument("--max-new-tokens", type=int, default=24)
    evaluate.add_argument("--batch-size", type=int, default=256)
    evaluate.add_argument("--arithmetic", choices=("exact", "float"), default="exact")
    evaluate.add_argument("--out", help="directory for <split>.parquet and <split>.json (optional)")
    return parser


def _add_pair(p: argparse.ArgumentParser) -> None:
    p.add_argument("--donor", required=True, help="checkpoint the weights come from")
    p.add_argument("--target", required=True, help="checkpoint being repaired (config and tokenizer come from it)")
    p.add_argument("--out", required=True, help="output checkpoint directory (must not exist)")


def _run_edit(args) -> None:
    if args.method == "layer-reset":
        report = layer_reset(args.target, args.donor, args.out, args.layers, embeddings=args.embeddings)
    else:
        report = edit_checkpoint(
            args.target, args.donor, args.out, args.method, args.top, args.bottom, args.types, device=args.device
        )
    print(report.summary())


def _run_spectrum(args) -> None:
    summary, per_index = compare(
        args.a, args.b, args.types, k_frac=args.k_frac, k=args.k, band=args.band, device=args.device
    )
    write_spectrum(summary, per_index, args.out)
    print(f"wrote {args.out} ({summary.height} rows) and {index_path(args.out)} ({per_index.height} rows)")


def _run_evaluate(args) -> None:
    import json
    from pathlib import Path

    from sftrl.atomic import write_parquet, write_text
    from sftrl.data import SPLITS, make_eval
    from sftrl.evaluate import GenerationSettings, evaluate_model
    from sftrl.models import check_checkpoint_dir

    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise UsageError(f"sftrl evaluate: error: --splits takes {', '.join(SPLITS)}; got {args.splits!r}")
    check_checkpoint_dir(args.model, key="model")
    hands = {s: make_eval(s, args.hands, args.seed, args.template) for s in splits}
    settings = GenerationSettings(args.max_new_tokens, args.batch_size, args.decoding, args.seed)
    results = evaluate_model(args.model, hands, args.template, args.turns, settings, args.arithmetic)
    for split, (records, summary) in results.items():
        print(json.dumps({"split": split, **summary}))
        if args.out:
            write_parquet(records, Path(args.out) / f"{split}.parquet")
            write_text(json.dumps({"split": split, **summary}, indent=2) + "\n", Path(args.out) / f"{split}.json")


HANDLERS = {"edit": _run_edit, "spectrum": _run_spectrum, "evaluate": _run_evaluate}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        HANDLERS[args.command](args)
    except (UsageError, CheckpointError, ValueError) as e:
        print(e if isinstance(e, UsageError) else f"sftrl: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
