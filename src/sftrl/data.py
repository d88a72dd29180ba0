"""The study's data sets, generated deterministically from config seeds.

* ``sft``      -- ID-rule prompts with a solver solution as the answer (SFT data).
* ``rl``       -- ID-rule prompts (PPO/GRPO episodes start from these hands).
* ``eval-id``  -- fixed ID hands (J/Q/K = 10), 234 by default, seed 42 (PAPER.md §2.6).
* ``eval-ood`` -- fixed OOD hands (J/Q/K = 11/12/13, at least one face card).
* ``pretrain`` -- tiny source only: hands whose J/Q/K values are drawn per example and stated in
  the prompt, so the tiny base learns to *read* the rule, as the study's pretrained models can.

Every row keeps the cards, the numbers under its rule and the rendered prompt. The optional
held-out split removes a seeded fraction of the 1820 rank multisets from every training set and
flags evaluation hands that fall in it (``heldout``), so accuracy on hand types never trained on
can be reported beside the overall figure.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import polars as pl

from sftrl.game import RANKS, card_to_rank, deal, face_values, hand_numbers, solve
from sftrl.prompts import get_template

SPLITS = ("id", "ood")

SCHEMA = {
    "hand_id": pl.Int64,
    "cards": pl.List(pl.String),
    "rule": pl.String,
    "face_values": pl.List(pl.Int64),
    "numbers": pl.List(pl.Int64),
    "heldout": pl.Boolean,
    "prompt": pl.String,
    "completion": pl.String,
}


def rank_multisets() -> list[tuple[int, ...]]:
    """All 1820 sorted 4-tuples of ranks 1..13 (with repetition)."""
    return list(itertools.combinations_with_replacement(RANKS, 4))


def heldout_multisets(fraction: float, seed: int) -> frozenset[tuple[int, ...]]:
    """A seeded ``fraction`` of the rank multisets, never used for training."""
    if not fraction:
        return frozenset()
    allsets = rank_multisets()
    rng = random.Random(seed)
    return frozenset(rng.sample(allsets, round(fraction * len(allsets))))


def _ranks(cards) -> tuple[int, ...]:
    return tuple(sorted(card_to_rank(c) for c in cards))


def _rows(
    n: int,
    seed: int,
    template: str,
    draw_rule: Callable[[random.Random], str | tuple],
    ood: bool,
    heldout: frozenset,
    train: bool,
    with_answer: bool,
    answer: str = "first",
) -> pl.DataFrame:
    tpl = get_template(template)
    rng = random.Random(seed)
    accept = (lambda ranks: ranks not in heldout) if (train and heldout) else None
    rows = []
    for i in range(n):
        rule = draw_rule(rng)
        cards = deal(rng, rule=rule, ood=ood, accept=accept)
        numbers = hand_numbers(cards, rule)
        completion = ""
        if with_answer:
            solutions = solve(numbers)
            formula = solutions[0] if answer == "first" else rng.choice(solutions)
            completion = tpl.response(cards, rule, formula)
        rows.append(
            {
                "hand_id": i,
                "cards": cards,
                "rule": rule if isinstance(rule, str) else "custom",
                "face_values": list(face_values(rule)),
                "numbers": numbers,
                "heldout": _ranks(cards) in heldout,
                "prompt": tpl.prompt(cards, rule),
                "completion": completion,
            }
        )
    return pl.DataFrame(rows, schema=SCHEMA)


def make_sft(
    n: int, seed: int, template: str, heldout: frozenset = frozenset(), answer: str = "first"
) -> pl.DataFrame:
    """ID-rule SFT examples: prompt and one solver solution as the answer.

    ``answer="first"``: the solver's first solution, the same for every hand with the same numbers
    (a learnable lookup for a tiny model); ``"random"``: a solution drawn with the seed (closer to the
    study, whose solver shuffled before taking the first).
    """
    _check_answer(answer)
    return _rows(n, seed, template, lambda rng: "id", False, heldout, train=True, with_answer=True, answer=answer)


def make_rl(n: int, seed: int, template: str, heldout: frozenset = frozenset()) -> pl.DataFrame:
    """ID-rule prompts for RL; the answer column is empty (the verifier scores the policy)."""
    return _rows(n, seed, template, lambda rng: "id", False, heldout, train=True, with_answer=False)


def make_eval(split: str, n: int, seed: int, template: str, heldout: frozenset = frozenset()) -> pl.DataFrame:
    """Fixed evaluation hands; ``split`` is ``id`` (J/Q/K = 10) or ``ood`` (11/12/13, >= 1 face card)."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    return _rows(n, seed, template, lambda rng: split, split == "ood", heldout, train=False, with_answer=False)


def _pretrain_rule(rng: random.Random) -> tuple[int, int, int]:
    # Half the examples draw J/Q/K values from 1..13, half from 10..13, so 11-13 (the OOD values)
    # and 10 (the ID value) are both common and the model must read them from the prompt.
    low = 1 if rng.random() < 0.5 else 10
    return tuple(rng.randint(low, 13) for _ in range(3))


def make_pretrain(
    n: int, seed: int, template: str, heldout: frozenset = frozenset(), answer: str = "first"
) -> pl.DataFrame:
    """Tiny base pretraining: the J/Q/K values of each example are drawn and stated in its prompt."""
    _check_answer(answer)
    return _rows(n, seed, template, _pretrain_rule, False, heldout, train=True, with_answer=True, answer=answer)


ANSWERS = ("first", "random")


def _check_answer(answer: str) -> None:
    if answer not in ANSWERS:
        raise ValueError(f"data.answer: expected one of {ANSWERS}, got {answer!r}")
