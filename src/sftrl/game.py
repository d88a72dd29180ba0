"""The 24-point card game "GeneralPoints" (GP-L): cards, rules, dealing, solver and verifier.

Rules
-----
A hand is four cards, ranks 1..13 drawn independently with replacement
(``A, 2..10, J, Q, K``).  Each card stands for a number: ``A`` = 1 and ``2..10`` their face
value under every rule; the face cards depend on the rule:

* ``"id"``  (in-distribution, the training rule): J, Q, K = 10, 10, 10;
* ``"ood"`` (out-of-distribution rule):            J, Q, K = 11, 12, 13;
* a tuple ``(j, q, k)`` of positive ints: any other face values (the tiny model's pretraining
  states arbitrary values in its prompt).

The player must write a formula with ``+ - * / ( )`` that uses every card's number exactly once
and evaluates to the target (24).  Only solvable hands are dealt.

Verifier (``check_formula``), following the study's ``step_rewards`` (docs/study.md §3)
------------------------------------------------------------------------------------
1. text after the first ``=`` is dropped (``"(10-4)*(2+2)=24"`` -> ``"(10-4)*(2+2)"``);
2. the string must consist of ASCII number tokens and ``+-*/()`` only -- anything else,
   *including any whitespace*, gives ILLEGAL (-3) and the check stops;
3. a grammar pass gives -3 for every bad token transition (operator at the start or after an
   operator or ``(``; a number or ``(`` after a number or ``)``; ``)`` after an operator or
   ``(``) and every unmatched ``)``.  A trailing operator or an unclosed ``(`` is *not* a
   grammar fault (the study's pass only looks at transitions): it just cannot be evaluated;
4. a number not in the hand *or* (if none is) a number used too often gives -2; a hand number
   left unused gives another -2 (so at most -4 from numbers);
5. only when nothing was penalised the formula is evaluated: equal to the target -> +5
   (CORRECT, solved); evaluation impossible (unclosed ``(``, trailing operator, division by
   zero, a number with a leading zero such as ``08`` -- a SyntaxError for Python's ``eval``,
   more than 200 nested parentheses) but the string is a prefix of a solver solution -> +1
   (PARTIAL); otherwise -1 (NO_SOLUTION) with a message naming the longest token prefix that
   is still the start of some solution.

Reward table: correct +5, partial +1, no solution -1, wrong numbers -2, illegal -3; penalties
add up within one check (e.g. a grammar fault plus an unused number = -5).  The messages are
the study's (lower-case, joined by ``", "``, ending in a period), so that the verifier turn
``"You failed this trial because {message}"`` reads exactly like the study's.

Exact versus float arithmetic
-----------------------------
The study evaluated formulas with Python's ``eval`` (floats).  This module never uses
``eval``; it parses the tokens itself and evaluates with exact ``Fraction`` arithmetic by
default (``arithmetic="exact"``).  The two differ only on formulas whose float rounding
misses the target: ``8/(3-8/3)`` is exactly 24, but in floats it is 23.999999999999993, so it
is CORRECT in exact mode and not solved in ``arithmetic="float"`` mode.  Float mode reproduces
the study's rewards, including its quirk that such a formula -- a solver solution whose every
prefix matches a solution -- gets reward 0 (no penalty and no credit; the study's message was
empty, here it says why).  Exact mode never produces reward 0.

Known differences from the study's code
---------------------------------------
* ``solve`` enumerates every binary tree and prints minimal parentheses; the study's
  Rosetta-Code solver tried fixed bracket placements and kept redundant brackets
  (``(2*10)+4``).  Prefix matching (PARTIAL / NO_SOLUTION messages) therefore uses this
  module's solution strings.  The solver consumes no randomness, so ``deal`` does not replay
  the study's random stream.
* an empty formula (``""``, ``"=24"``) is ILLEGAL (-3), like a missing one; the study's
  tokenizer let it through and charged only the unused numbers (-2);
* number tokens are ASCII digits only (the study's ``\\d`` accepted any Unicode digit);
* bounded input: a formula longer than ``MAX_FORMULA_CHARS`` is ILLEGAL (-3) without
  further checks, number tokens longer than ``MAX_NUMBER_DIGITS`` digits are never converted
  (they count as numbers not in the hand), and nesting deeper than ``MAX_NESTING`` cannot be
  evaluated (as in CPython, whose tokenizer refuses more than 200 nested parentheses).

Every string gives a ``Verdict``; nothing here raises on model output or takes more than time
linear in its length.
"""

from __future__ import annotations

import functools
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "ARITHMETIC_MODES",
    "CARDS",
    "MAX_FORMULA_CHARS",
    "MAX_NESTING",
    "MAX_NUMBER_DIGITS",
    "RANKS",
    "REWARDS",
    "RULES",
    "STATUSES",
    "Verdict",
    "card_to_rank",
    "card_value",
    "check_formula",
    "deal",
    "face_values",
    "hand_numbers",
    "is_solvable",
    "rank_to_card",
    "solve",
]

RANKS = range(1, 14)
_RANK_TO_CARD = {1: "A", 11: "J", 12: "Q", 13: "K"} | {r: str(r) for r in range(2, 11)}
_CARD_TO_RANK = {card: rank for rank, card in _RANK_TO_CARD.items()}
CARDS: tuple[str, ...] = tuple(_RANK_TO_CARD[r] for r in RANKS)

RULES: dict[str, tuple[int, int, int]] = {"id": (10, 10, 10), "ood": (11, 12, 13)}

REWARDS: dict[str, float] = {
    "correct": 5.0,
    "partial": 1.0,
    "no_solution": -1.0,
    "wrong_numbers": -2.0,
    "illegal": -3.0,
}
# worst first: Verdict.status is the worst fault seen
STATUSES: tuple[str, ...] = ("illegal", "wrong_numbers", "no_solution", "partial", "correct")
ARITHMETIC_MODES = ("exact", "float")

MAX_FORMULA_CHARS = 1024
MAX_NUMBER_DIGITS = 100
MAX_NESTING = 200  # CPython's tokenizer limit on nested parentheses
_MAX_DEAL_TRIES = 100_000

_TOKEN_RE = re.compile(r"[0-9]+|[+\-*/()]")
_OPS = "+-*/"


# ---------------------------------------------------------------------------------------------
# cards and rules


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def rank_to_card(rank: int) -> str:
    """``1 -> "A"``, ``2..10 -> "2".."10"``, ``11 -> "J"``, ``12 -> "Q"``, ``13 -> "K"``."""
    if not _is_int(rank) or rank not in _RANK_TO_CARD:
        raise ValueError(f"invalid rank {rank!r}: expected an int in 1..13")
    return _RANK_TO_CARD[rank]


def card_to_rank(card: str) -> int:
    """Inverse of :func:`rank_to_card`."""
    if not isinstance(card, str) or card not in _CARD_TO_RANK:
        raise ValueError(f"invalid card {card!r}: expected one of {', '.join(CARDS)}")
    return _CARD_TO_RANK[card]


def face_values(rule: str | Sequence[int]) -> tuple[int, int, int]:
    """The numbers of (J, Q, K) under ``rule``: ``"id"``, ``"ood"`` or three positive ints."""
    if isinstance(rule, str):
        if rule not in RULES:
            raise ValueError(
                f"invalid rule {rule!r}: expected one of {sorted(RULES)} "
                "or a tuple of three positive ints (J, Q, K values)"
            )
        return RULES[rule]
    if isinstance(rule, (tuple, list)) and len(rule) == 3 and all(_is_int(v) and v >= 1 for v in rule):
        return (rule[0], rule[1], rule[2])
    raise ValueError(
        f"invalid rule {rule!r}: expected one of {sorted(RULES)} or a tuple of three positive ints (J, Q, K values)"
    )


def card_value(card: str, rule: str | Sequence[int] = "id") -> int:
    """The number a card stands for under ``rule`` (A = 1 under every rule)."""
    rank = card_to_rank(card)
    faces = face_values(rule)
    return faces[rank - 11] if rank >= 11 else rank


def hand_numbers(cards: Iterable[str], rule: str | Sequence[int] = "id") -> list[int]:
    """The numbers of ``cards`` under ``rule``, in card order."""
    faces = face_values(rule)
    out = []
    for card in cards:
        rank = card_to_rank(card)
        out.append(faces[rank - 11] if rank >= 11 else rank)
    return out


def deal(
    rng: random.Random,
    rule: str | Sequence[int] = "id",
    ood: bool = False,
    target: int = 24,
    accept: Callable[[tuple[int, ...]], bool] | None = None,
) -> list[str]:
    """Deal one solvable hand of four cards, deterministically from ``rng``.

    Ranks come from ``rng.randint(1, 13)``, independent and with replacement. With ``ood``
    three ranks come from ``randint(1, 13)`` and one from ``randint(11, 13)``, then the four are
    ``rng.shuffle``-d, so the hand holds at least one face card (the study's OOD env).
    ``accept``, if given, is called with the sorted rank tuple and may reject the hand (to hold
    rank multisets out). Hands are redrawn until accepted and solvable under ``rule``.
    """
    faces = face_values(rule)
    for _ in range(_MAX_DEAL_TRIES):
        if ood:
            ranks = [rng.randint(1, 13) for _ in range(3)] + [rng.randint(11, 13)]
            rng.shuffle(ranks)
        else:
            ranks = [rng.randint(1, 13) for _ in range(4)]
        if accept is not None and not accept(tuple(sorted(ranks))):
            continue
        numbers = [faces[r - 11] if r >= 11 else r for r in ranks]
        if is_solvable(numbers, target):
            return [_RANK_TO_CARD[r] for r in ranks]
    raise RuntimeError(
        f"deal: no acceptable solvable hand in {_MAX_DEAL_TRIES} draws "
        f"(rule={rule!r}, ood={ood}, target={target}); is `accept` too strict?"
    )


# ---------------------------------------------------------------------------------------------
# solver

# An expression table maps a value to the distinct strings (with their top-level operator,
# "" for a bare number) that evaluate to it.
_Table = dict[Fraction, list[tuple[str, str]]]


def _render(op: str, left: str, lop: str, right: str, rop: str) -> str:
    """``left op right`` with minimal parentheses (value-preserving under left association)."""
    if op in "*/" and lop in ("+", "-"):
        left = f"({left})"
    if rop and ((op in "*/" and rop in "+-") or (op == "-" and rop in "+-") or (op == "/" and rop in "*/")):
        right = f"({right})"
    return f"{left}{op}{right}"


def _splits(key: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every ordered split of a sorted multiset into two non-empty sub-multisets."""
    n = len(key)
    seen = set()
    out = []
    for mask in range(1, (1 << n) - 1):
        left = tuple(key[i] for i in range(n) if mask >> i & 1)
        if left in seen:
            continue
        seen.add(left)
        right = tuple(key[i] for i in range(n) if not mask >> i & 1)
        out.append((left, right))
    return out


def _combine(left: _Table, right: _Table, table: _Table, seen: set[str]) -> None:
    for lv, lexprs in left.items():
        for rv, rexprs in right.items():
            for op in _OPS:
                if op == "+":
                    v = lv + rv
                elif op == "-":
                    v = lv - rv
                elif op == "*":
                    v = lv * rv
                elif rv == 0:
                    continue
                else:
                    v = lv / rv
                for ls, lop in lexprs:
                    for rs, rop in rexprs:
                        s = _render(op, ls, lop, rs, rop)
                        if s not in seen:
                            seen.add(s)
                            table.setdefault(v, []).append((s, op))


@functools.lru_cache(maxsize=4096)
def _table(key: tuple[int, ...]) -> _Table:
    """All distinct expressions over the multiset ``key`` (sorted), grouped by value."""
    if len(key) == 1:
        return {Fraction(key[0]): [(str(key[0]), "")]}
    table: _Table = {}
    seen: set[str] = set()
    for left, right in _splits(key):
        _combine(_table(left), _table(right), table, seen)
    return table


@functools.lru_cache(maxsize=16384)
def _solutions(key: tuple[int, ...], target: Fraction) -> tuple[str, ...]:
    if len(key) == 1:
        return (str(key[0]),) if key[0] == target else ()
    if target == 0:  # rare: no division trick, enumerate everything
        return tuple(sorted(s for s, _ in _table(key).get(target, [])))
    found: set[str] = set()
    t = target
    for lkey, rkey in _splits(key):
        left, right = _table(lkey), _table(rkey)
        pairs: list[tuple[str, Fraction, Fraction]] = []
        if len(right) <= len(left):
            for rv in right:  # needed left value for  l op rv == t
                pairs.append(("+", t - rv, rv))
                pairs.append(("-", t + rv, rv))
                if rv != 0:
                    pairs.append(("*", t / rv, rv))
                    pairs.append(("/", t * rv, rv))
        else:
            for lv in left:  # needed right value for  lv op r == t
                pairs.append(("+", lv, t - lv))
                pairs.append(("-", lv, lv - t))
                if lv != 0:
                    pairs.append(("*", lv, t / lv))
                    pairs.append(("/", lv, lv / t))
        for op, lv, rv in pairs:
            lexprs = left.get(lv)
            rexprs = right.get(rv)
            if not lexprs or not rexprs:
                continue
            for ls, lop in lexprs:
                for rs, rop in rexprs:
                    found.add(_render(op, ls, lop, rs, rop))
    return tuple(sorted(found))


def _numbers(numbers: Iterable[int]) -> list[int]:
    """``numbers`` as a list, validated: non-empty, non-negative ints."""
    if isinstance(numbers, (str, bytes)):
        nums = None
    else:
        try:
            nums = list(numbers)
        except TypeError:
            nums = None
    if not nums or not all(_is_int(n) and n >= 0 for n in nums):
        raise ValueError(f"numbers must be a non-empty sequence of non-negative ints, got {numbers!r}")
    return nums


def _key(numbers: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted(_numbers(numbers)))


def _target(target: int | Fraction) -> Fraction:
    if isinstance(target, bool) or not isinstance(target, (int, Fraction)):
        raise ValueError(f"target must be an int or Fraction, got {target!r}")
    return Fraction(target)


def solve(numbers: Iterable[int], target: int = 24) -> list[str]:
    """Every distinct formula using each of ``numbers`` exactly once that equals ``target``.

    Exact rational arithmetic; all orderings, tree shapes and operators ``+ - * /``; minimal
    parentheses; no spaces; sorted. Cached on the sorted numbers (a fresh list is returned).
    """
    return list(_solutions(_key(numbers), _target(target)))


def is_solvable(numbers: Iterable[int], target: int = 24) -> bool:
    """Whether :func:`solve` finds at least one formula (shares its cache)."""
    return bool(_solutions(_key(numbers), _target(target)))


# ---------------------------------------------------------------------------------------------
# verifier


@dataclass(frozen=True)
class Verdict:
    """The verifier's judgement of one formula.

    ``reward``: the summed reward (see the module docstring); ``message``: the feedback sentence,
    to be inserted after "You failed this trial because "; ``status``: the worst fault, one of
    ``STATUSES``; ``solved``: the formula equals the target; ``numbers_ok``: the formula's number
    tokens, as a multiset, equal the hand's numbers (even if the formula is otherwise wrong);
    ``formula``: the formula after dropping the text from the first ``=``; ``wrong``: the
    numbers the message names as invalid or used too many times; ``unused``: the hand numbers it
    names as unused (both empty unless the status is ``wrong_numbers``). The compact template
    renders the verdict from ``status``, ``wrong`` and ``unused`` (``sftrl.prompts``).
    """

    reward: float
    message: str
    status: str
    solved: bool
    numbers_ok: bool
    formula: str
    wrong: tuple[int | str, ...] = ()
    unused: tuple[int | str, ...] = ()


class _EvalError(Exception):
    pass


def _number_key(token: str) -> int | str:
    """A number token's value; over-long tokens stay strings (they match no hand number)."""
    digits = token.lstrip("0") or "0"
    if len(digits) > MAX_NUMBER_DIGITS:
        return "huge:" + digits
    return int(digits)


def _show(values: list[int | str]) -> str:
    parts = []
    for v in values:
        if isinstance(v, str):
            digits = v[len("huge:") :]
            parts.append(f"{digits[:8]}...({len(digits)} digits)")
        else:
            parts.append(str(v))
    return "[" + ", ".join(parts) + "]"


class _Parser:
    """Evaluates a token list by recursive descent:

        expr := term (('+'|'-') term)*      term := atom (('*'|'/') atom)*
        atom := number | '(' expr ')'

    Recursion only for parentheses (2 frames per level; depth is checked beforehand)."""

    def __init__(self, tokens: list[str], exact: bool) -> None:
        self.tokens = tokens
        self.pos = 0
        self.exact = exact

    def parse(self) -> Fraction | float:
        value = self._expr()
        if self.pos != len(self.tokens):
            raise _EvalError("trailing tokens")
        return value

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _expr(self) -> Fraction | float:
        total = None
        pending = "+"
        while True:
            term = self._atom()
            while self._peek() in ("*", "/"):
                op = self.tokens[self.pos]
                self.pos += 1
                rhs = self._atom()
                if op == "*":
                    term = term * rhs
                else:
                    if rhs == 0:
                        raise _EvalError("division by zero")
                    term = term / rhs
            if total is None:
                total = term
            elif pending == "+":
                total = total + term
            else:
                total = total - term
            nxt = self._peek()
            if nxt in ("+", "-"):
                pending = nxt
                self.pos += 1
                continue
            return total

    def _atom(self) -> Fraction | float:
        tok = self._peek()
        if tok is None:
            raise _EvalError("unexpected end")
        if tok == "(":
            self.pos += 1
            value = self._expr()
            if self._peek() != ")":
                raise _EvalError("missing ')'")
            self.pos += 1
            return value
        if tok[0] in "0123456789":
            if len(tok) > 1 and tok[0] == "0" and tok.strip("0"):
                raise _EvalError("leading zero")  # Python's eval: SyntaxError
            if len(tok) > MAX_NUMBER_DIGITS:
                raise _EvalError("number too long")
            self.pos += 1
            return Fraction(int(tok)) if self.exact else float(int(tok))
        raise _EvalError(f"unexpected {tok!r}")


def _evaluate(tokens: list[str], exact: bool) -> Fraction | float | None:
    depth = max_depth = 0
    for tok in tokens:
        if tok == "(":
            depth += 1
            max_depth = max(max_depth, depth)
        elif tok == ")":
            depth -= 1
    if max_depth > MAX_NESTING:
        return None
    try:
        return _Parser(tokens, exact).parse()
    except (_EvalError, ZeroDivisionError, OverflowError, RecursionError):
        return None


def _grammar(tokens: list[str]) -> list[str]:
    """The study's token-transition pass: one message per fault."""
    faults = []
    prev = None  # None | "number" | "operator" | "open" | "close"
    open_parens = 0
    for tok in tokens:
        if tok in _OPS:
            kind = "operator"
            if prev not in ("number", "close"):
                faults.append("invalid sequence after operator")
        elif tok == "(":
            kind = "open"
            if prev in (None, "operator", "open"):
                open_parens += 1
            else:
                faults.append("invalid sequence before '('")
        elif tok == ")":
            kind = "close"
            if prev in ("number", "close"):
                if open_parens:
                    open_parens -= 1
                else:
                    faults.append("unmatched closing parenthesis")
            else:
                faults.append("invalid sequence after ')'")
        else:
            kind = "number"
            if prev not in (None, "operator", "open"):
                faults.append("invalid sequence after number")
        prev = kind
    return faults


def _verdict(
    reward: float,
    messages: list[str],
    statuses: set[str],
    numbers_ok: bool,
    formula: str,
    wrong: Sequence[int | str] = (),
    unused: Sequence[int | str] = (),
) -> Verdict:
    status = next(s for s in STATUSES if s in statuses)
    return Verdict(
        reward=float(reward),
        message=", ".join(messages) + ".",
        status=status,
        solved=status == "correct",
        numbers_ok=numbers_ok,
        formula=formula,
        wrong=tuple(wrong),
        unused=tuple(unused),
    )


def check_formula(
    formula: str | None,
    numbers: Sequence[int],
    target: int = 24,
    arithmetic: str = "exact",
) -> Verdict:
    """Score ``formula`` against the hand ``numbers`` (see the module docstring).

    ``formula=None`` (no formula found in the answer) is scored like the study's ``"None"``
    placeholder: illegal characters (-3); an empty formula is illegal too. Raises
    ``ValueError`` only for bad ``numbers``, ``target`` or ``arithmetic`` (``TypeError`` for a
    formula that is neither a str nor None); any formula string gives a Verdict.
    """
    if arithmetic not in ARITHMETIC_MODES:
        raise ValueError(f"invalid arithmetic {arithmetic!r}: expected one of {ARITHMETIC_MODES}")
    hand_list = _numbers(numbers)
    hand = tuple(sorted(hand_list))
    hand_counts = Counter(hand_list)  # hand order, for the study's message order
    t = _target(target)
    if formula is None:
        formula = "None"
    if not isinstance(formula, str):
        raise TypeError(f"formula must be a str or None, got {type(formula).__name__}")

    formula = formula.split("=", 1)[0]
    if len(formula) > MAX_FORMULA_CHARS:
        return _verdict(
            REWARDS["illegal"],
            [f"your formula is longer than {MAX_FORMULA_CHARS} characters"],
            {"illegal"},
            False,
            formula,
        )

    if not formula:
        # The study's tokens would "match" and only the unused numbers cost -2; an empty
        # formula is treated like a missing one (the study's "None") instead: illegal.
        return _verdict(REWARDS["illegal"], ["your formula is empty"], {"illegal"}, False, formula)

    tokens = _TOKEN_RE.findall(formula)
    used_counts = Counter(_number_key(tok) for tok in tokens if tok[0] in "0123456789")
    numbers_ok = used_counts == hand_counts

    if "".join(tokens) != formula:
        return _verdict(REWARDS["illegal"], ["illegal characters"], {"illegal"}, numbers_ok, formula)

    reward = 0.0
    messages: list[str] = []
    statuses: set[str] = set()

    for fault in _grammar(tokens):
        reward += REWARDS["illegal"]
        messages.append(fault)
        statuses.add("illegal")

    invalid = [n for n in used_counts if n not in hand_counts]
    overused = [n for n in used_counts if n in hand_counts and used_counts[n] > hand_counts[n]]
    if invalid:
        reward += REWARDS["wrong_numbers"]
        messages.append(f"you used invalid numbers: {_show(invalid)}")
        statuses.add("wrong_numbers")
    elif overused:
        reward += REWARDS["wrong_numbers"]
        messages.append(f"you used numbers: {_show(overused)} too many times")
        statuses.add("wrong_numbers")
    unused = [n for n in hand_counts if hand_counts[n] > used_counts[n]]
    if unused:
        reward += REWARDS["wrong_numbers"]
        messages.append(f"you didn't use numbers: {_show(unused)}")
        statuses.add("wrong_numbers")

    if reward != 0:
        return _verdict(reward, messages, statuses, numbers_ok, formula, invalid or overused, unused)

    solutions = _solutions(hand, t)
    value = _evaluate(tokens, exact=arithmetic == "exact")
    if value is not None and value == t:
        return _verdict(REWARDS["correct"], ["correct solution"], {"correct"}, numbers_ok, formula)
    if value is None and any(sol.startswith(formula) for sol in solutions):
        return _verdict(REWARDS["partial"], ["partial solution"], {"partial"}, numbers_ok, formula)

    # the study's message: the longest token prefix that still starts some solution
    register = ""
    for tok in tokens:
        prev, register = register, register + tok
        if not any(sol.startswith(register) for sol in solutions):
            reward += REWARDS["no_solution"]
            if prev == "":
                messages.append("your formula does not match any solution")
            else:
                messages.append(f"{prev} is partially correct but the full formula does not match any solution")
            break
    else:
        # Float mode only: an exact solution whose float value misses the target. The study
        # gives no penalty here (reward 0) and an empty message.
        messages.append(f"your formula evaluates to {value!r} in floating-point arithmetic, not {target}")
    return _verdict(reward, messages, {"no_solution"}, numbers_ok, formula)
