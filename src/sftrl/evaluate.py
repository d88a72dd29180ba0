"""Evaluation: batched generation and the study's multi-turn verification (docs/study.md §3-§4).

An episode is one hand. The model answers; the verifier (``sftrl.game.check_formula``) scores the
extracted formula; a failed attempt is answered with the verifier's feedback turn and the model
tries again, up to ``turns`` attempts. A hand is solved when one attempt is correct.

Generation is batched (left padding, KV cache) over all unfinished episodes of a turn; the
generator is any callable ``generate(dialogues) -> list[str]``, so the episode logic is tested with
scripted answers and runs unchanged on a real model (:class:`Generator`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch
from tqdm.auto import tqdm

from sftrl.game import Verdict, check_formula
from sftrl.prefix_cache import PrefixCache, generate_rows
from sftrl.prompts import Template, get_template

Dialogue = list[dict[str, str]]  # chat messages: {"role": "user" | "assistant", "content": ...}

RECORD_SCHEMA = {
    "hand_id": pl.Int64,
    "cards": pl.List(pl.String),
    "numbers": pl.List(pl.Int64),
    "heldout": pl.Boolean,
    "responses": pl.List(pl.String),
    "formulas": pl.List(pl.String),
    "rewards": pl.List(pl.Float64),
    "statuses": pl.List(pl.String),
    "numbers_ok": pl.Boolean,
    "format_error": pl.Boolean,
    "turns": pl.Int64,
    "solved": pl.Boolean,
}


# --------------------------------------------------------------------------------------------
# Episodes
# --------------------------------------------------------------------------------------------


def run_episodes(
    generate: Callable[[list[Dialogue]], list[str]],
    hands: pl.DataFrame,
    template: Template | str,
    turns: int,
    arithmetic: str = "exact",
    check: Callable[..., Verdict] = check_formula,
) -> pl.DataFrame:
    """Play every hand for up to ``turns`` attempts; one row per hand (``RECORD_SCHEMA``).

    ``numbers_ok`` and ``format_error`` describe the first attempt: whether its formula uses
    exactly the hand's numbers under the rule (right result or not) and whether no legal formula
    could be read from it at all. ``check(formula, numbers, arithmetic=...)`` is the verifier
    (``formula`` is None when none could be read: the study's "None"); tests swap in toy rewards.
    """
    tpl = get_template(template) if isinstance(template, str) else template
    n = hands.height
    dialogues: list[Dialogue] = [[{"role": "user", "content": p}] for p in hands["prompt"]]
    numbers = hands["numbers"].to_list()
    log = [{"responses": [], "formulas": [], "rewards": [], "statuses": [], "verdicts": []} for _ in range(n)]
    active = list(range(n))
    for _turn in range(turns):
        if not active:
            break
        answers = generate([dialogues[i] for i in active])
        if len(answers) != len(active):
            raise RuntimeError(f"generator returned {len(answers)} answers for {len(active)} dialogues")
        still = []
        for i, text in zip(active, answers, strict=True):
            formula = tpl.extract(text)
            verdict = check(formula, numbers[i], arithmetic=arithmetic)
            rec = log[i]
            rec["responses"].append(text)
            rec["formulas"].append(formula)
            rec["rewards"].append(float(verdict.reward))
            rec["statuses"].append(verdict.status)
            rec["verdicts"].append(verdict)
            if not verdict.solved:
                dialogues[i] += [
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": tpl.feedback(verdict)},
                ]
                still.append(i)
        active = still
    rows = []
    for i, rec in enumerate(log):
        first = rec["verdicts"][0]
        rows.append(
            {
                "hand_id": hands["hand_id"][i],
                "cards": hands["cards"][i].to_list(),
                "numbers": numbers[i],
                "heldout": hands["heldout"][i],
                "responses": rec["responses"],
                "formulas": rec["formulas"],
                "rewards": rec["rewards"],
                "statuses": rec["statuses"],
                "numbers_ok": first.numbers_ok,
                "format_error": rec["formulas"][0] is None or first.status == "illegal",
                "turns": len(rec["responses"]),
                "solved": any(v.solved for v in rec["verdicts"]),
            }
        )
    return pl.DataFrame(rows, schema=RECORD_SCHEMA)


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarise(records: pl.DataFrame, turns: int | None = None) -> dict:
    """Accuracy with its Wilson interval (any of the attempts), the first attempt's accuracy
    with its interval (``first_*``), the share of hands first solved on each turn
    (``solved_by_turn``, ``turns`` entries: where any multi-turn gain comes from),
    numbers-correct and format-error rates of the first attempt, the share of first answers that
    use 10 more often than the hand holds a 10 (``extra_ten``: on OOD hands, the ID rule's J/Q/K = 10
    applied against the prompt), mean turns, and accuracy on the
    held-out rank multisets (``heldout_*``; n = 0 without a split)."""
    n = records.height
    solved = int(records["solved"].sum())
    lo, hi = wilson_interval(solved, n)
    turns = turns or records["turns"].max() or 1
    first_solved = [next((t for t, st in enumerate(sts) if st == "correct"), None) for sts in records["statuses"]]
    by_turn = [sum(1 for f in first_solved if f == t) for t in range(turns)]
    first_lo, first_hi = wilson_interval(by_turn[0], n)
    # the ID rule's mistake on OOD hands: the first answer uses 10 more often than the hand holds a 10
    tens = [
        formulas[0] is not None and re.findall(r"\d+", formulas[0]).count("10") > list(hand).count(10)
        for formulas, hand in zip(records["formulas"].to_list(), records["numbers"].to_list(), strict=True)
    ]
    held = records.filter(pl.col("heldout"))
    held_solved = int(held["solved"].sum()) if held.height else 0
    held_lo, held_hi = wilson_interval(held_solved, held.height)
    return {
        "n": n,
        "solved": solved,
        "accuracy": solved / n if n else math.nan,
        "ci_low": lo,
        "ci_high": hi,
        "first_accuracy": by_turn[0] / n if n else math.nan,
        "first_ci_low": first_lo,
        "first_ci_high": first_hi,
        "solved_by_turn": [k / n if n else math.nan for k in by_turn],
        "numbers_correct": float(records["numbers_ok"].mean()) if n else math.nan,
        "format_error": float(records["format_error"].mean()) if n else math.nan,
        "extra_ten": sum(tens) / n if n else math.nan,
        "mean_turns": float(records["turns"].mean()) if n else math.nan,
        "heldout_n": held.height,
        "heldout_accuracy": held_solved / held.height if held.height else None,
        "heldout_ci_low": held_lo if held.height else None,
        "heldout_ci_high": held_hi if held.height else None,
    }


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


@dataclass
class GenerationSettings:
    """``eval`` section of the config: how answers are generated."""

    max_new_tokens: int = 24
    batch_size: int = 256
    decoding: str = "greedy"  # greedy | model (the checkpoint's own generation_config, e.g. sampling)
    seed: int = 42


class Generator:
    """Batched generation for dialogues: left padding, KV cache, length-sorted batches."""

    def __init__(
        self, model, tokenizer, template: Template | str, settings: GenerationSettings, reuse_cache: bool = True
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.template = get_template(template) if isinstance(template, str) else template
        self.settings = settings
        if tokenizer.padding_side != "left":
            raise ValueError("batched generation needs a left-padding tokenizer")
        gen = model.generation_config
        kwargs = {"max_new_tokens": settings.max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
        if settings.decoding == "greedy":
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        elif settings.decoding != "model":
            raise ValueError(f"eval.decoding: expected greedy or model, got {settings.decoding!r}")
        if gen.eos_token_id is None:
            kwargs["eos_token_id"] = tokenizer.eos_token_id
        self.generate_kwargs = kwargs
        # Each turn continues the previous turn's KV cache (sftrl.prefix_cache): the same answers
        # without re-reading the dialogue; ``forget`` before other weights generate.
        self.prefixes = PrefixCache() if reuse_cache else None
        self._turn_prefixes: PrefixCache | None = None  # the cache of the turn being generated
        self.reseed()

    def forget(self) -> None:
        """Drop the cached turns (the weights changed, or a new set of dialogues starts)."""
        if self.prefixes is not None:
            self.prefixes.clear()

    def reseed(self) -> None:
        """Seed sampling (decoding: model) so each split's answers depend only on eval.seed."""
        torch.manual_seed(self.settings.seed)

    def render(self, dialogue: Dialogue) -> str:
        """The model's input text for a dialogue, ending where the assistant's answer starts."""
        if self.template.chat:
            return self.tokenizer.apply_chat_template(dialogue, tokenize=False, add_generation_prompt=True)
        return "".join(m["content"] for m in dialogue)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, unpadded (chat templates already hold their special tokens)."""
        return self.tokenizer(list(texts), add_special_tokens=not self.template.chat)["input_ids"]

    def next_turn(self, dialogues: int) -> None:
        """Start a turn of ``dialogues`` dialogues. When they fit in one batch it continues the
        previous turn's cache and keeps its own; otherwise every prompt is read whole and nothing
        is kept, so memory stays bounded by the batch size (the run-only memory setting): one
        batch's cache kept between turns (and copied once as the next turn starts), never one
        cache per batch of a large evaluation (``sftrl.prefix_cache``: when else it reads whole)."""
        self._turn_prefixes = None
        if self.prefixes is None:
            return
        if dialogues > self.settings.batch_size:
            self.prefixes.clear()
        else:
            self.prefixes.next_turn()
            self._turn_prefixes = self.prefixes

    def generate_ids(self, prompts: list[list[int]], **kwargs) -> torch.Tensor:
        """One batch of a turn (:meth:`next_turn`): the new token ids after each prompt (B, new),
        continued from the previous turn's cache where a prompt extends one of its rows;
        ``kwargs`` go to ``generate``."""
        return generate_rows(self.model, prompts, self.tokenizer.pad_token_id, self._turn_prefixes, **kwargs)

    @torch.inference_mode()
    def __call__(self, dialogues: list[Dialogue]) -> list[str]:
        texts = [self.render(d) for d in dialogues]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding per batch
        out: list[str] = [""] * len(texts)
        bs = self.settings.batch_size
        self.next_turn(len(texts))
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            new = self.generate_ids(self.encode([texts[i] for i in idx]), **self.generate_kwargs)
            for i, text in zip(idx, self.tokenizer.batch_decode(new, skip_special_tokens=True), strict=True):
                out[i] = text
        return out


def evaluate_model(
    model_dir: str | os.PathLike,
    hands: dict[str, pl.DataFrame],
    template: str,
    turns: int,
    settings: GenerationSettings,
    arithmetic: str = "exact",
    dtype: str = "auto",
    progress: bool = True,
) -> dict[str, tuple[pl.DataFrame, dict]]:
    """Load a checkpoint once and play the hands of every split; ``{split: (records, summary)}``.

    Sampling is reseeded before each split, so a split's answers do not depend on the others.
    """
    from sftrl.checkpoints import resolve_device
    from sftrl.models import load_model, load_tokenizer

    model = load_model(model_dir, dtype=dtype, device=resolve_device())
    generator = Generator(model, load_tokenizer(model_dir), template, settings)
    results = {}
    for split, split_hands in hands.items():
        generator.reseed()
        bar = tqdm(total=turns, desc=f"evaluate {Path(model_dir).name} {split}", disable=not progress)

        def generate(dialogues, bar=bar):
            answers = generator(dialogues)
            bar.update(1)
            return answers

        records = run_episodes(generate, split_hands, template, turns, arithmetic)
        generator.forget()  # the next split starts from nothing (and its last turn is not kept)
        bar.close()
        results[split] = (records, summarise(records, turns))
    return results


def evaluate_for_job(job, model_dir: str | os.PathLike, name: str) -> None:
    """What an evaluation job writes (the ``evaluate`` rule, and the ``edit`` rule for the model it
    edits; ``job`` is the ``snakemake`` object): ``model_dir`` played on the hands of each split of
    ``params.splits`` (``input.hands``) with the ``eval`` settings ``params.eval`` (the run-only
    ``eval.batch_size`` from the config), ``params.template`` and ``params.dtype``; each split's
    records (parquet) and summary (JSON, the model named ``name``) written atomically to
    ``output.records`` and ``output.summaries``."""
    import json

    from sftrl.atomic import write_parquet, write_text

    e, splits = job.params.eval, job.params.splits
    settings = GenerationSettings(
        max_new_tokens=e["max_new_tokens"],
        batch_size=job.config["eval"]["batch_size"],
        decoding=e["decoding"],
        seed=e["seed"],
    )
    hands = {split: pl.read_parquet(path) for split, path in zip(splits, job.input.hands, strict=True)}
    results = evaluate_model(model_dir, hands, job.params.template, e["turns"], settings, e["arithmetic"],
                             job.params.dtype)  # fmt: skip
    for (split, (records, summary)), records_path, summary_path in zip(
        results.items(), job.output.records, job.output.summaries, strict=True
    ):
        summary = {"model": name, "split": split, **summary}
        write_parquet(records, records_path)
        write_text(json.dumps(summary, indent=2) + "\n", summary_path)
        print(json.dumps(summary, indent=2))
