"""Tests of sftrl.game: cards and rules, dealing, the solver and the verifier.

Solvable rank multisets (4 cards, ranks 1..13 with repetition: 1820 multisets), checked
against an independent brute force below:
  ID rule  (J/Q/K = 10):        1236 solvable
  OOD rule (J/Q/K = 11/12/13):  1362 solvable
"""

from __future__ import annotations

import functools
import itertools
import math
import random
import re
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sftrl import game
from sftrl.game import (
    CARDS,
    MAX_FORMULA_CHARS,
    MAX_NESTING,
    RANKS,
    REWARDS,
    RULES,
    STATUSES,
    Verdict,
    card_to_rank,
    card_value,
    check_formula,
    deal,
    face_values,
    hand_numbers,
    is_solvable,
    rank_to_card,
    solve,
)

SOLVABLE_ID = 1236
SOLVABLE_OOD = 1362
ALL_RANK_MULTISETS = list(itertools.combinations_with_replacement(RANKS, 4))

# ---------------------------------------------------------------------------------------------
# cards and rules


def test_card_names_round_trip():
    assert [rank_to_card(r) for r in RANKS] == list(CARDS)
    assert CARDS == ("A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")
    for rank in RANKS:
        assert card_to_rank(rank_to_card(rank)) == rank


@pytest.mark.parametrize("bad", [0, 14, -1, True, 1.0, "A", None])
def test_rank_to_card_rejects(bad):
    with pytest.raises(ValueError, match="1..13"):
        rank_to_card(bad)


@pytest.mark.parametrize("bad", ["1", "T", "a", "11", "", "k", 10, None])
def test_card_to_rank_rejects(bad):
    with pytest.raises(ValueError, match=r"A, 2, 3.*J, Q, K"):
        card_to_rank(bad)


def test_rules_and_values():
    assert RULES == {"id": (10, 10, 10), "ood": (11, 12, 13)}
    assert face_values("id") == (10, 10, 10)
    assert face_values("ood") == (11, 12, 13)
    assert face_values((3, 5, 7)) == (3, 5, 7)
    assert face_values([3, 5, 7]) == (3, 5, 7)
    for card, id_value, ood_value in [
        ("A", 1, 1),
        ("7", 7, 7),
        ("10", 10, 10),
        ("J", 10, 11),
        ("Q", 10, 12),
        ("K", 10, 13),
    ]:
        assert card_value(card, "id") == id_value
        assert card_value(card, "ood") == ood_value
    assert card_value("Q", (4, 5, 6)) == 5
    assert hand_numbers(["2", "Q", "7", "Q"], "id") == [2, 10, 7, 10]
    assert hand_numbers(["2", "Q", "7", "Q"], "ood") == [2, 12, 7, 12]
    assert hand_numbers(["J", "Q", "K", "A"], (20, 30, 40)) == [20, 30, 40, 1]


@pytest.mark.parametrize(
    "bad", ["ID", "", "face10", (10, 10), (1, 2, 3, 4), (0, 1, 2), (1.0, 2, 3), (True, 2, 3), None, 10]
)
def test_bad_rule(bad):
    with pytest.raises(ValueError, match=r"'id'.*'ood'.*three positive ints"):
        face_values(bad)
    with pytest.raises(ValueError):
        card_value("J", bad)


def test_bad_card_in_hand():
    with pytest.raises(ValueError, match="'X'"):
        hand_numbers(["A", "X"], "id")


# ---------------------------------------------------------------------------------------------
# solver


def _div(a, b):
    """a / b, an int when exact (fast path), else a Fraction."""
    if isinstance(a, int) and isinstance(b, int) and a % b == 0:
        return a // b
    return Fraction(a) / b


@functools.cache
def _brute_solvable(values: tuple, target: int = 24) -> bool:
    """Independent brute force: repeatedly replace two numbers by one result (no formatting)."""
    if len(values) == 1:
        return values[0] == target
    if len(values) == 2:
        a, b = values
        return (
            a + b == target
            or a - b == target
            or b - a == target
            or a * b == target
            or (b != 0 and a == target * b)
            or (a != 0 and b == target * a)
        )
    for i, j in itertools.combinations(range(len(values)), 2):
        a, b = values[i], values[j]
        rest = [values[k] for k in range(len(values)) if k not in (i, j)]
        results = {a + b, a - b, b - a, a * b}
        if b != 0:
            results.add(_div(a, b))
        if a != 0:
            results.add(_div(b, a))
        for r in results:
            if _brute_solvable(tuple(sorted(rest + [r]))):
                return True
    return False


def _rule_numbers(ranks, rule):
    faces = face_values(rule)
    return [faces[r - 11] if r >= 11 else r for r in ranks]


@pytest.mark.parametrize("rule, expected", [("id", SOLVABLE_ID), ("ood", SOLVABLE_OOD)])
def test_solvability_matches_brute_force(rule, expected):
    count = 0
    for ranks in ALL_RANK_MULTISETS:
        numbers = _rule_numbers(ranks, rule)
        brute = _brute_solvable(tuple(sorted(numbers)))
        assert is_solvable(numbers) == brute, (ranks, rule)
        assert bool(solve(numbers)) == brute, (ranks, rule)
        count += brute
    assert count == expected


def test_every_solution_is_checked_correct():
    # every number multiset of 1..13 (covers both rules' hands): all solver strings are
    # sorted, distinct, space-free, use the hand exactly once and are solved in exact mode
    n_formulas = 0
    for ranks in ALL_RANK_MULTISETS:
        numbers = list(ranks)
        sols = solve(numbers)
        assert sols == sorted(set(sols))
        for formula in sols:
            assert formula == "".join(formula.split())
            verdict = check_formula(formula, numbers)
            assert verdict.solved and verdict.reward == 5.0 and verdict.numbers_ok, formula
            n_formulas += 1
    assert n_formulas > 10_000


def test_solve_examples():
    assert solve([3, 3, 8, 8]) == ["8/(3-8/3)"]
    assert solve([8, 3, 8, 3]) == ["8/(3-8/3)"]  # order of the hand is irrelevant
    sols = solve([10, 4, 2, 2])
    assert "(10-4)*(2+2)" in sols
    assert "(10-2*2)*4" in sols  # minimal parentheses: no "(2*2)"
    assert "10*2+4" not in sols
    assert solve([1, 1, 1, 1]) == []
    assert solve([6, 4], target=24) == ["4*6", "6*4"]
    assert solve([24]) == ["24"]
    assert solve([2, 2, 3, 4], target=0)  # target 0 takes the slow path
    assert all(check_formula(f, [2, 2, 3, 4], target=0).solved for f in solve([2, 2, 3, 4], 0))


def test_solve_returns_fresh_list():
    first = solve([10, 4, 2, 2])
    first.append("junk")
    assert "junk" not in solve([10, 4, 2, 2])


@pytest.mark.parametrize("bad", [[1, 2, -3, 4], [1.5, 2, 3, 4], [], "1234", None, [True, 2, 3, 4]])
def test_solve_rejects_bad_numbers(bad):
    with pytest.raises(ValueError, match="non-negative ints"):
        solve(bad)


# ---------------------------------------------------------------------------------------------
# dealing


def test_deal_deterministic():
    a = [deal(random.Random(123), "ood", ood=True) for _ in range(3)]
    rng1, rng2 = random.Random(7), random.Random(7)
    hands1 = [deal(rng1) for _ in range(50)]
    hands2 = [deal(rng2) for _ in range(50)]
    assert hands1 == hands2
    assert a[0] == a[1] == a[2]
    assert len(set(map(tuple, hands1))) > 30


@pytest.mark.parametrize("rule, ood", [("id", False), ("ood", True), ("ood", False), ((2, 3, 4), True)])
def test_dealt_hands_are_solvable(rule, ood):
    rng = random.Random(1)
    for _ in range(200):
        hand = deal(rng, rule, ood=ood)
        assert len(hand) == 4 and all(card in CARDS for card in hand)
        assert is_solvable(hand_numbers(hand, rule))
        if ood:
            assert any(card in ("J", "Q", "K") for card in hand)


def test_deal_ood_face_card_position_is_shuffled():
    rng = random.Random(3)
    positions = set()
    for _ in range(200):
        hand = deal(rng, "ood", ood=True)
        positions.update(i for i, c in enumerate(hand) if c in ("J", "Q", "K"))
    assert positions == {0, 1, 2, 3}


def test_deal_accept_is_honoured():
    held_out = {ranks for ranks in ALL_RANK_MULTISETS if sum(ranks) % 3 == 0}
    seen = []

    def accept(ranks):
        seen.append(ranks)
        return ranks not in held_out

    rng = random.Random(5)
    for _ in range(100):
        hand = deal(rng, "id", accept=accept)
        assert tuple(sorted(card_to_rank(c) for c in hand)) not in held_out
    assert all(s == tuple(sorted(s)) and len(s) == 4 for s in seen)
    assert len(seen) > 100  # some hands were rejected and redrawn


def test_deal_gives_up_clearly():
    with pytest.raises(RuntimeError, match="accept"):
        deal(random.Random(0), accept=lambda ranks: False)


# ---------------------------------------------------------------------------------------------
# verifier: table of cases on the hand 10, 4, 2, 2 unless noted

HAND = [10, 4, 2, 2]
HUGE = "9" * 150

VERDICT_CASES = [
    # correct
    ("(10-4)*(2+2)", HAND, 5, "correct", "correct solution."),
    # correct with "=24" tail (text after "=" dropped)
    ("(10-4)*(2+2)=24", HAND, 5, "correct", "correct solution."),
    # correct, anything after "=" is ignored, even junk
    ("(10-4)*(2+2)=twenty four", HAND, 5, "correct", "correct solution."),
    # space inside: illegal characters, check stops
    ("(10-4) * (2+2)", HAND, -3, "illegal", "illegal characters."),
    # space before "=": the formula keeps a trailing space
    ("(10-4)*(2+2) =24", HAND, -3, "illegal", "illegal characters."),
    # unknown character
    ("(10-4)x(2+2)", HAND, -3, "illegal", "illegal characters."),
    # "**": operator after operator (grammar), numbers are fine
    ("(10-4)**2+2", HAND, -3, "illegal", "invalid sequence after operator."),
    # "**" with a huge exponent: grammar fault plus a number not in the hand
    (
        "2**9999",
        HAND,
        -3 - 2 - 2,
        "illegal",
        "invalid sequence after operator, you used invalid numbers: [9999], you didn't use numbers: [10, 4, 2].",
    ),
    # double operator
    ("10+-4*2*2", HAND, -3, "illegal", "invalid sequence after operator."),
    # leading binary operator
    ("*10-4*2*2", HAND, -3, "illegal", "invalid sequence after operator."),
    # number after ")"
    ("(10-4*2)2", HAND, -3, "illegal", "invalid sequence after number."),
    # "(" after a number: a fault, and (as in the study) that "(" is not opened, so its ")"
    # is unmatched too
    ("10(4-2)*2", HAND, -6, "illegal", "invalid sequence before '(', unmatched closing parenthesis."),
    # ")" after an operator
    ("(10-4*)2+2", HAND, -6, "illegal", "invalid sequence after ')', invalid sequence after number."),
    # unmatched ")"
    ("(10-4)*(2+2))", HAND, -3, "illegal", "unmatched closing parenthesis."),
    # unclosed "(" that is a prefix of a solution: partial credit
    ("(10-4)*(2+2", HAND, 1, "partial", "partial solution."),
    # unclosed "(" that is no prefix of a solution: names the consistent prefix
    (
        "(10-4)*(2-2",
        HAND,
        -1,
        "no_solution",
        "(10-4)*(2 is partially correct but the full formula does not match any solution.",
    ),
    # trailing operator: no grammar fault in the study; not evaluable, no prefix -> -1
    (
        "(10-4)*(2+2)*",
        HAND,
        -1,
        "no_solution",
        "(10-4)*(2+2) is partially correct but the full formula does not match any solution.",
    ),
    # unused number
    ("10*2+4", HAND, -2, "wrong_numbers", "you didn't use numbers: [2]."),
    # number not in the hand
    ("(10-4)*(2+2)+3-3", HAND, -2, "wrong_numbers", "you used invalid numbers: [3]."),
    # number used too often
    ("(10-4)*(2+2)+4-4", HAND, -2, "wrong_numbers", "you used numbers: [4] too many times."),
    # both: not in the hand and unused
    ("10*3+4", HAND, -4, "wrong_numbers", "you used invalid numbers: [3], you didn't use numbers: [2]."),
    # wrong value
    ("10-4-2-2", HAND, -1, "no_solution", "your formula does not match any solution."),
    (
        "(10-4)*2-2",
        HAND,
        -1,
        "no_solution",
        "(10-4)*2 is partially correct but the full formula does not match any solution.",
    ),
    # division by zero
    ("3*4/(4-4)", [3, 4, 4, 4], -1, "no_solution", None),
    # leading zero: Python's eval raises SyntaxError, so not evaluable -> -1
    ("(10-04)*(2+2)", HAND, -1, "no_solution", None),
    # unicode digits (fullwidth, Arabic-Indic)
    ("(１０-４)*(２+２)", HAND, -3, "illegal", "illegal characters."),
    ("(10-٤)*(2+2)", HAND, -3, "illegal", "illegal characters."),
    # huge number (beyond MAX_NUMBER_DIGITS): a number not in the hand, never converted
    (f"(10-4)*(2+2)+{HUGE}", HAND, -2, "wrong_numbers", "you used invalid numbers: [99999999...(150 digits)]."),
    # NUL byte
    ("(10-4)*(2+2)\x00", HAND, -3, "illegal", "illegal characters."),
    # empty string: illegal, like a missing formula (the study charged only -2, unused numbers)
    ("", HAND, -3, "illegal", "your formula is empty."),
    # empty before "="
    ("=24", HAND, -3, "illegal", "your formula is empty."),
    # no formula at all (extraction failed): the study's "None" placeholder
    (None, HAND, -3, "illegal", "illegal characters."),
    # 8/(3-8/3): exactly 24
    ("8/(3-8/3)", [3, 3, 8, 8], 5, "correct", "correct solution."),
    # ID hand with face cards: J, Q, K count as 10
    ("10+10+2+2", hand_numbers(["J", "Q", "2", "2"], "id"), 5, "correct", "correct solution."),
    (
        "11+12+2-1",
        hand_numbers(["J", "Q", "2", "2"], "id"),
        -4,
        "wrong_numbers",
        "you used invalid numbers: [11, 12, 1], you didn't use numbers: [10, 2].",
    ),
    # OOD hand: K counts as 13
    ("13+11", [13, 11], 5, "correct", "correct solution."),
    # too long
    ("(" * (MAX_FORMULA_CHARS + 1), HAND, -3, "illegal", None),
    # nesting beyond MAX_NESTING cannot be evaluated (CPython refuses it too)
    ("(" * (MAX_NESTING + 1) + "(10-4)*(2+2)" + ")" * (MAX_NESTING + 1), HAND, -1, "no_solution", None),
    # deep but allowed nesting
    ("(" * (MAX_NESTING - 1) + "(10-4)*(2+2)" + ")" * (MAX_NESTING - 1), HAND, 5, "correct", None),
]


@pytest.mark.parametrize("formula, numbers, reward, status, message", VERDICT_CASES)
def test_verdict_table(formula, numbers, reward, status, message):
    verdict = check_formula(formula, numbers)
    assert isinstance(verdict, Verdict)
    assert verdict.reward == reward
    assert isinstance(verdict.reward, float)
    assert verdict.status == status
    assert verdict.solved == (status == "correct")
    if message is not None:
        assert verdict.message == message
    assert verdict.message.endswith(".")
    expected_formula = "None" if formula is None else formula.split("=")[0]
    assert verdict.formula == expected_formula


def test_numbers_ok():
    assert check_formula("(10-4)*(2+2)", HAND).numbers_ok
    assert check_formula("10-4-2-2", HAND).numbers_ok  # wrong value, right numbers
    assert check_formula("(10-4) * (2+2)", HAND).numbers_ok  # illegal, right numbers
    assert check_formula("(10-4)*(2+2", HAND).numbers_ok
    assert not check_formula("10*2+4", HAND).numbers_ok
    assert not check_formula("10*2+4+2+2", HAND).numbers_ok
    assert not check_formula("", HAND).numbers_ok
    assert not check_formula(None, HAND).numbers_ok


def test_exact_versus_float():
    exact = check_formula("8/(3-8/3)", [8, 3, 8, 3])
    flt = check_formula("8/(3-8/3)", [8, 3, 8, 3], arithmetic="float")
    assert exact.solved and exact.reward == 5
    # the study's eval gives 23.999999999999993; every prefix matches a solution, so the
    # study adds neither penalty nor credit
    assert not flt.solved and flt.reward == 0 and flt.status == "no_solution"
    assert "floating-point" in flt.message
    # where floats are exact both modes agree
    for formula in ["(10-4)*(2+2)", "10-4-2-2", "(10-4)*(2+2", "10*2+4"]:
        a = check_formula(formula, HAND)
        b = check_formula(formula, HAND, arithmetic="float")
        assert (a.reward, a.status, a.message) == (b.reward, b.status, b.message)


def test_float_mode_on_all_solutions():
    # the only float-mode difference: some exact solutions score 0 instead of +5
    zeros = 0
    for ranks in ALL_RANK_MULTISETS[::7]:
        for formula in solve(list(ranks)):
            v = check_formula(formula, list(ranks), arithmetic="float")
            assert v.reward in (5.0, 0.0)
            zeros += v.reward == 0
    assert zeros > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="'exact'.*'float'"):
        check_formula("1+2", [1, 2], arithmetic="decimal")
    with pytest.raises(ValueError, match="non-negative ints"):
        check_formula("1+2", [])
    with pytest.raises(ValueError, match="target"):
        check_formula("1+2", [1, 2], target="24")
    with pytest.raises(TypeError):
        check_formula(12, [1, 2])


def test_module_never_uses_eval():
    import inspect

    source = inspect.getsource(game)
    code = source.split('"""', 2)[2]  # skip the module docstring, which mentions eval
    assert not re.search(r"(?<![\w.])(eval|exec|compile|__import__)\s*\(", code)
    assert "literal_eval" not in code


# ---------------------------------------------------------------------------------------------
# verifier: properties

MAX_PENALTY = 3 * MAX_FORMULA_CHARS + 4


def _assert_well_formed(v: Verdict) -> None:
    assert isinstance(v, Verdict)
    assert isinstance(v.reward, float) and math.isfinite(v.reward)
    assert v.reward == int(v.reward)
    assert v.status in STATUSES
    assert v.solved == (v.status == "correct")
    assert isinstance(v.message, str) and v.message.endswith(".")
    if v.status == "correct":
        assert v.reward == REWARDS["correct"]
    elif v.status == "partial":
        assert v.reward == REWARDS["partial"]
    elif v.status == "no_solution":
        assert v.reward in (REWARDS["no_solution"], 0.0)
    elif v.status == "wrong_numbers":
        assert v.reward in (-2.0, -4.0)
    else:  # illegal: -3 per fault plus at most -4 from numbers
        assert -MAX_PENALTY <= v.reward <= -3.0


hands = st.lists(st.integers(1, 13), min_size=4, max_size=4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=300), numbers=hands, arithmetic=st.sampled_from(["exact", "float"]))
def test_check_formula_total_on_any_text(text, numbers, arithmetic):
    v = check_formula(text, numbers, arithmetic=arithmetic)
    _assert_well_formed(v)
    if arithmetic == "exact":
        assert v.reward != 0.0


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.text(alphabet="0123456789+-*/()= ", max_size=40),
    numbers=hands,
    arithmetic=st.sampled_from(["exact", "float"]),
)
def test_check_formula_total_on_formula_alphabet(text, numbers, arithmetic):
    v = check_formula(text, numbers, arithmetic=arithmetic)
    _assert_well_formed(v)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(numbers=hands, data=st.data())
def test_solution_prefixes(numbers, data):
    sols = solve(numbers)
    if not sols:
        return
    formula = data.draw(st.sampled_from(sols))
    cut = data.draw(st.integers(1, len(formula)))
    v = check_formula(formula[:cut], numbers)
    _assert_well_formed(v)
    # a prefix of a solution solves, is partial, or lacks numbers: never illegal or no_solution
    assert v.status in ("correct", "partial", "wrong_numbers"), (formula[:cut], v)


@pytest.mark.parametrize("text", ["9" * 5000, "(" * 100_000, "1+" * 50_000, "\x00" * 1000, "1" * 4301 + "=24"])
def test_pathological_inputs(text):
    v = check_formula(text, HAND)
    _assert_well_formed(v)
    assert v.status == "illegal"
