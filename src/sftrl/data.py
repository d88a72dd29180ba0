"""The study's data sets, generated deterministically from config seeds.

* ``sft``      -- ID-rule prompts with a solver solution as the answer (SFT data).
* ``rl``       -- ID-rule prompts (PPO/GRPO episodes start from these hands).
* ``eval-id``  -- fixed ID hands (J/Q/K = 10), 234 by default, seed 42 (docs/study.md §4).
* ``eval-ood`` -- fixed OOD hands (J/Q/K = 11/12/13, at least one face card).
* ``pretrain`` -- tiny source only: hands whose J/Q/K values are drawn per example and stated in
  the prompt, so the tiny base learns to *read* the rule, as the study's pretrained models can.
  Like an instruct model it also learns to use the verifier's feedback: a fraction of the
  examples are dialogues of wrong attempts, each followed by its feedback turn, then the right
  answer (loss on the right answer only). And like an instruct model facing the study's JSON
  format it answers in its own style: a fraction of the examples wrap every answer in ``[...]``,
  which the verifier rejects and SFT unlearns first.

Every row keeps the cards, the numbers under its rule and the rendered prompt. The optional
held-out split removes a seeded fraction of the 1820 rank multisets from every training set and
flags evaluation hands that fall in it (``heldout``), so accuracy on hand types never trained on
can be reported beside the overall figure.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable

import polars as pl

from sftrl.game import RANKS, card_to_rank, check_formula, deal, face_values, hand_numbers, solve
from sftrl.prompts import COMPACT_WRAP, get_template

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


def make_sft(n: int, seed: int, template: str, heldout: frozenset = frozenset(), answer: str = "first") -> pl.DataFrame:
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


# Wrong attempts per feedback dialogue: 1, 2 or 3 with these weights.
WRONG_ATTEMPTS = {1: 0.60, 2: 0.24, 3: 0.16}


def wrong_attempt(rng: random.Random, cards, numbers: list[int], solutions: list[str]) -> str:
    """A plausible wrong answer to a hand, never a correct one.

    Mostly the mistake SFT on the ID rule teaches: the hand solved with other J/Q/K values (10
    half the time), which the verifier answers with invalid and unused numbers. Otherwise a
    solution with one number changed, or with its numbers right and one operator changed.
    """
    faces = [i for i, c in enumerate(cards) if c in ("J", "Q", "K")]
    for _ in range(20):
        kind = rng.random()
        if faces and kind < 0.6:
            alt = (10, 10, 10) if rng.random() < 0.5 else tuple(rng.randint(1, 13) for _ in range(3))
            alt_solutions = solve(hand_numbers(cards, alt))
            if not alt_solutions:
                continue
            formula = rng.choice(alt_solutions)
        elif kind < 0.8:
            tokens = re.findall(r"\d+|\D", rng.choice(solutions))
            spots = [i for i, t in enumerate(tokens) if t.isdigit()]
            i = rng.choice(spots)
            tokens[i] = str(rng.choice([v for v in range(1, 14) if v != int(tokens[i])]))
            formula = "".join(tokens)
        else:
            tokens = list(rng.choice(solutions))
            spots = [i for i, t in enumerate(tokens) if t in "+-*/"]
            i = rng.choice(spots)
            tokens[i] = rng.choice([op for op in "+-*/" if op != tokens[i]])
            formula = "".join(tokens)
        if not check_formula(formula, numbers).solved:
            return formula
    return "1"  # a hand where no variant missed: any wrong formula will do


def make_pretrain(
    n: int,
    seed: int,
    template: str,
    heldout: frozenset = frozenset(),
    answer: str = "first",
    feedback_fraction: float = 0.0,
    wrapped_fraction: float = 0.0,
) -> pl.DataFrame:
    """Tiny base pretraining: the J/Q/K values of each example are drawn and stated in its prompt.

    ``feedback_fraction`` of the examples are feedback dialogues: 1-3 wrong attempts
    (:func:`wrong_attempt`), each followed by the verifier's feedback turn for it, in the prompt;
    the right answer is the completion. ``wrapped_fraction`` of the examples write every answer
    as ``[formula]``, an answer format the verifier rejects (in a dialogue every feedback turn is
    then ``!x||``, illegal): a style the model keeps within a dialogue, as the study's instruct
    models kept missing its JSON format until SFT taught it.
    """
    _check_answer(answer)
    if not (0 <= feedback_fraction <= 1 and 0 <= wrapped_fraction <= 1):
        raise ValueError(
            f"feedback_fraction and wrapped_fraction must be in [0, 1]; got {feedback_fraction}, {wrapped_fraction}"
        )
    tpl = get_template(template)
    if tpl.chat and (feedback_fraction or wrapped_fraction):
        raise ValueError(f"feedback dialogues and wrapped answers need a plain-text template, not {template!r}")
    df = _rows(n, seed, template, _pretrain_rule, False, heldout, train=True, with_answer=True, answer=answer)
    if not (feedback_fraction or wrapped_fraction):
        return df
    rng = random.Random(seed + 1)  # a stream of its own: the hands are those of the plain data
    open_, close = COMPACT_WRAP
    prompts, completions = [], []
    for cards, numbers, prompt, completion in zip(
        df["cards"].to_list(), df["numbers"].to_list(), df["prompt"], df["completion"], strict=True
    ):
        wrap = (lambda text: open_ + text + close) if rng.random() < wrapped_fraction else (lambda text: text)
        if rng.random() < feedback_fraction:
            solutions = solve(numbers)
            k = rng.choices(list(WRONG_ATTEMPTS), weights=list(WRONG_ATTEMPTS.values()))[0]
            for _ in range(k):
                text = wrap(wrong_attempt(rng, cards, numbers, solutions))
                prompt += text + tpl.feedback(check_formula(tpl.extract(text), numbers))
        completion = wrap(completion)
        prompts.append(prompt)
        completions.append(completion)
    return df.with_columns(pl.Series("prompt", prompts), pl.Series("completion", completions))


ANSWERS = ("first", "random")


def _check_answer(answer: str) -> None:
    if answer not in ANSWERS:
        raise ValueError(f"data.answer: expected one of {ANSWERS}, got {answer!r}")
