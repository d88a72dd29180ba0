"""Tests of sftrl.prompts: the study's exact prompt, the compact form, feedback and parsing."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sftrl.game import CARDS, RANKS, check_formula, rank_to_card, solve
from sftrl.prompts import (
    COMPACT_ALPHABET,
    COMPACT_FEEDBACK,
    TEMPLATES,
    Template,
    compact_prompt,
    compact_response,
    extract_formula,
    face_card_msg,
    get_template,
    paper_prompt,
    paper_response,
)

# ---------------------------------------------------------------------------------------------
# the study's text, written out literally

PAPER_PROMPT_ID = (
    "\n"
    "[Task Description]\n"
    "You are an expert 24 points card game player. You will receive a set of 4 cards.\n"
    "Note that 'J', 'Q', and 'K' count as '10'., and each card must be used once.\n"
    "Your goal is to output a formula that evaluates to 24 using numbers from the cards and "
    "operators such as '+', '-', '*', '/', '(', ')', and '='.\n"
    "\n"
    "[Input]\n"
    "Cards: ['2', 'Q', '7', 'Q']\n"
    "\n"
    "[Output]\n"
    "{\n"
    "  \"cards\": [x, y, z, w], where 'J', 'Q', and 'K' count as '10'.,\n"
    '  "number": [a, b, c, d], where a, b, c, and d are the numbers on the cards,\n'
    "  \"formula\": 'an equation that equals 24',\n"
    "}\n"
)

PAPER_RESPONSE_OOD = (
    "{\n  \"cards\": ['2', 'Q', '7', 'Q'],\n  \"number\": ['2', '12', '7', '12'],\n  \"formula\": \"(12-7)*2+12\"\n}"
)


def test_paper_prompt_id_exact():
    assert paper_prompt(["2", "Q", "7", "Q"], "id") == PAPER_PROMPT_ID


def test_paper_prompt_ood_exact():
    expected = PAPER_PROMPT_ID.replace(
        "'J', 'Q', and 'K' count as '10'.",
        "'J', 'Q', and 'K' count as '11', '12', and '13' respectively.",
    )
    text = paper_prompt(["2", "Q", "7", "Q"], "ood")
    assert text == expected
    assert "respectively., and each card must be used once." in text
    assert "respectively.,\n" in text
    assert text.startswith("\n[Task Description]\n") and text.endswith("}\n")


def test_paper_prompt_cards_repr():
    text = paper_prompt(["A", "10", "K", "5"], "id")
    assert "Cards: ['A', '10', 'K', '5']\n" in text


def test_paper_response_exact():
    assert paper_response(["2", "Q", "7", "Q"], "ood", "(12-7)*2+12") == PAPER_RESPONSE_OOD
    id_response = paper_response(["2", "Q", "7", "Q"], "id", "(10-7)*2+10")
    assert "\"number\": ['2', '10', '7', '10'],\n" in id_response


def test_face_card_msg():
    assert face_card_msg("id") == "'J', 'Q', and 'K' count as '10'."
    assert face_card_msg("ood") == "'J', 'Q', and 'K' count as '11', '12', and '13' respectively."
    assert face_card_msg((4, 5, 6)) == "'J', 'Q', and 'K' count as '4', '5', and '6' respectively."
    assert face_card_msg((7, 7, 7)) == "'J', 'Q', and 'K' count as '7'."
    assert face_card_msg((10, 10, 10)) == face_card_msg("id")
    assert face_card_msg((11, 12, 13)) == face_card_msg("ood")


@pytest.mark.parametrize("bad_cards", [["2", "Q", "7", "X"], "2Q7Q", [2, "Q", "7", "Q"]])
def test_prompts_reject_bad_cards(bad_cards):
    for fn in (paper_prompt, compact_prompt):
        with pytest.raises(ValueError):
            fn(bad_cards, "id")


def test_prompts_reject_bad_rule():
    with pytest.raises(ValueError, match="'id'"):
        paper_prompt(["2", "Q", "7", "Q"], "OOD")
    with pytest.raises(ValueError, match="'id'"):
        compact_prompt(["2", "Q", "7", "Q"], (1, 2))


# ---------------------------------------------------------------------------------------------
# compact form


def test_compact_forms():
    assert compact_prompt(["J", "Q", "7", "9"], "ood") == "J Q 7 9|11 12 13|"
    assert compact_prompt(["J", "Q", "2", "2"], "id") == "J Q 2 2|10 10 10|"
    assert compact_prompt(["A", "10", "K", "K"], (3, 1, 12)) == "A 10 K K|3 1 12|"
    assert compact_response(["J", "Q", "2", "2"], "id", "10+10+2+2") == "10+10+2+2"
    assert COMPACT_FEEDBACK == "!"


def test_compact_alphabet_covers_everything():
    alphabet = set(COMPACT_ALPHABET)
    assert len(alphabet) == len(COMPACT_ALPHABET)  # no duplicates
    assert alphabet == set("0123456789AJQK |+-*/()!xnvp[]")
    seen = set(COMPACT_FEEDBACK) | set("xnvp[]")  # fault kinds and the base's answer wrapper
    for ranks in itertools.combinations_with_replacement(RANKS, 4):
        cards = [rank_to_card(r) for r in ranks]
        for rule in ("id", "ood"):
            seen |= set(compact_prompt(cards, rule))
    for ranks in itertools.combinations_with_replacement(range(1, 14), 4):
        for formula in solve(list(ranks))[:3]:
            seen |= set(compact_response(["A"] * 4, "ood", formula))
    assert seen <= alphabet


def test_compact_extract():
    tpl = get_template("compact")
    assert tpl.extract("10+10+2+2") == "10+10+2+2"
    assert tpl.extract("  10+10+2+2 \n junk after the line") == "10+10+2+2"
    assert tpl.extract("\n\n(10-4)*(2+2)\nmore") == "(10-4)*(2+2)"
    assert tpl.extract("10 + 10") == "10 + 10"  # inner whitespace is the verifier's business
    assert tpl.extract("") is None
    assert tpl.extract(" \n \n") is None
    assert tpl.extract(None) is None


# ---------------------------------------------------------------------------------------------
# templates and feedback


def test_templates():
    assert set(TEMPLATES) == {"paper", "compact"}
    paper, compact = get_template("paper"), get_template("compact")
    assert isinstance(paper, Template) and paper.name == "paper" and paper.chat is True
    assert isinstance(compact, Template) and compact.name == "compact" and compact.chat is False
    cards = ["2", "Q", "7", "Q"]
    assert paper.prompt(cards, "id") == paper_prompt(cards, "id")
    assert paper.response(cards, "ood", "(12-7)*2+12") == PAPER_RESPONSE_OOD
    assert paper.extract(PAPER_RESPONSE_OOD) == "(12-7)*2+12"
    assert compact.prompt(cards, "ood") == "2 Q 7 Q|11 12 13|"
    assert compact.response(cards, "ood", "(12-7)*2+12") == "(12-7)*2+12"
    with pytest.raises(dataclasses.FrozenInstanceError):
        paper.name = "other"


@pytest.mark.parametrize("bad", ["Paper", "", "json", None, 3])
def test_get_template_error(bad):
    with pytest.raises(ValueError, match=r"\['compact', 'paper'\]"):
        get_template(bad)


def test_feedback_sentences():
    paper = get_template("paper")
    assert (
        paper.feedback(check_formula("10*2+4", [11, 2, 4, 7]))
        == "You failed this trial because you used invalid numbers: [10], you didn't use numbers: [11, 7]."
    )
    assert paper.feedback(check_formula("2*12", [2, 12, 7, 3])) == (
        "You failed this trial because you didn't use numbers: [7, 3]."
    )
    assert paper.feedback(check_formula(None, [1, 2, 3, 4])) == ("You failed this trial because illegal characters.")


@pytest.mark.parametrize(
    "formula, numbers, feedback",
    [
        ("10*2+4", [11, 2, 4, 7], "!n10|11 7|"),  # the J/Q/K = 10 mistake: invalid 10, unused 11 and 7
        ("3*3*2+6", [3, 2, 6, 4], "!n3|4|"),  # 3 used too often, 4 unused (the paper: "too many times")
        ("2*12", [2, 12, 7, 3], "!n|7 3|"),  # unused numbers only
        ("2+12+7-3", [2, 12, 7, 3], "!v||"),  # right numbers, not 24
        ("2++12+7+3", [2, 12, 7, 3], "!x||"),  # a grammar fault: illegal
        ("2*12*(7-3", [2, 12, 7, 3], "!v||"),  # an unclosed bracket that starts no solution
        ("[(12-7)*2+12]", [2, 12, 7, 12], "!x||"),  # the base's wrapper: illegal characters
        (None, [2, 12, 7, 12], "!x||"),  # no formula at all (the study's "None")
        ("12*(2*7-12", [2, 12, 7, 12], "!p||"),  # an unclosed prefix of a solution: partial
        ("(12-7)*2+", [2, 12, 7, 12], "!n|12|"),  # unfinished, and a 12 unused
    ],
)
def test_compact_feedback_renders_the_verdict(formula, numbers, feedback):
    verdict = check_formula(formula, numbers)
    assert get_template("compact").feedback(verdict) == feedback
    assert set(feedback) <= set(COMPACT_ALPHABET) and feedback.startswith(COMPACT_FEEDBACK)


def test_compact_feedback_refuses_a_correct_answer():
    with pytest.raises(ValueError, match="status 'correct'"):
        get_template("compact").feedback(check_formula("12*(2*7-12)", [2, 12, 7, 12]))


# ---------------------------------------------------------------------------------------------
# extract_formula: what models actually write

EXTRACT_CASES = [
    # strict JSON
    ('{"cards": ["2", "Q", "7", "Q"], "number": [2, 12, 7, 12], "formula": "(12-7)*2+12"}', "(12-7)*2+12"),
    # the study's SFT target: single-quoted lists (not JSON), found by the regex
    (PAPER_RESPONSE_OOD, "(12-7)*2+12"),
    # single quotes everywhere
    ("{'cards': ['2', 'Q', '7', 'Q'], 'number': [2, 12, 7, 12], 'formula': '(12-7)*2+12'}", "(12-7)*2+12"),
    # trailing comma ([CHU]'s ResponseEqn)
    ('{\n  "cards": ["2", "Q"],\n  "formula": "(12-7)*2+12",\n}', "(12-7)*2+12"),
    # unquoted card names in other fields
    ('{"cards": [J, Q, 7, 9], "number": [10, 10, 7, 9], "formula": "(10-7)*10-9+3"}', "(10-7)*10-9+3"),
    # code fence and text around it
    (
        "Sure! Here is my answer:\n```json\n{\n  \"cards\": ['2', 'Q'],\n"
        '  "formula": "2*12"\n}\n```\nHope this helps.',
        "2*12",
    ),
    # "= 24" tail and spaces are kept: the verifier judges them
    ('{"formula": "(10 - 4) * (2 + 2) = 24"}', "(10 - 4) * (2 + 2) = 24"),
    # no space after the colon
    ('{"formula":"10+10+2+2"}', "10+10+2+2"),
    # mixed quotes: double-quoted key, single-quoted value
    ("{\"formula\": '10+10+2+2',}", "10+10+2+2"),
    # bare (unquoted) value
    ('{"cards": [J, Q, 2, 2], "formula": 10+10+2+2, }', "10+10+2+2"),
    ('{"formula": 24}', "24"),
    # JSON escapes in the value
    ('{"cards": [J], "formula": "10\\u002b14"}', "10+14"),
    # the first formula field wins when the text is not strict JSON
    ('"formula": "1+2", then again "formula": "3+4"', "1+2"),
    # empty value
    ('{"formula": ""}', ""),
    # no formula field
    ('{"cards": ["2", "Q"], "number": [2, 10]}', None),
    ("I don't know.", None),
    ("", None),
    ("formula", None),
    ('"formula":', None),
    # unterminated string (truncated generation)
    ('{"cards": ["2"], "formula": "(10-4)*(2+2', None),
]


@pytest.mark.parametrize("text, expected", EXTRACT_CASES)
def test_extract_formula(text, expected):
    assert extract_formula(text) == expected


@pytest.mark.parametrize("bad", [None, 12, b'{"formula": "1+2"}', ["formula"]])
def test_extract_formula_non_text(bad):
    assert extract_formula(bad) is None


def test_extract_formula_pathological():
    assert extract_formula("[" * 100_000 + '"formula": "1+1"') == "1+1"
    assert extract_formula('"formula": "' + "x" * 100_000) is None
    assert extract_formula('{"formula": "' + "1+" * 50_000 + '1"}') == "1+" * 50_000 + "1"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=400))
def test_extract_formula_never_raises(text):
    result = extract_formula(text)
    assert result is None or isinstance(result, str)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefix=st.text(alphabet="{}[]\"':,formula \n", max_size=60),
    suffix=st.text(alphabet="{}[]\"':,formula \n", max_size=60),
    value=st.text(max_size=30),
)
def test_extract_formula_never_raises_on_jsonish(prefix, suffix, value):
    text = prefix + '"formula": ' + json.dumps(value) + suffix
    result = extract_formula(text)
    assert result is None or isinstance(result, str)


cards_st = st.lists(st.sampled_from(CARDS), min_size=4, max_size=4)
rules_st = st.sampled_from(["id", "ood", (1, 2, 3), (11, 11, 11)])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cards=cards_st, rule=rules_st, formula=st.text(max_size=40))
def test_extract_formula_round_trips_paper_response(cards, rule, formula):
    assert extract_formula(paper_response(cards, rule, formula)) == formula


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ranks=st.lists(st.integers(1, 13), min_size=4, max_size=4), data=st.data())
def test_round_trip_solver_formulas(ranks, data):
    cards = [rank_to_card(r) for r in ranks]
    sols = solve(ranks)  # OOD numbers equal the ranks
    if not sols:
        return
    formula = data.draw(st.sampled_from(sols))
    for name in ("paper", "compact"):
        tpl = get_template(name)
        assert tpl.extract(tpl.response(cards, "ood", formula)) == formula
