"""Prompt templates, SFT targets, verifier feedback turns and response parsing.

Two templates:

* ``paper``: the study's exact text (``Q_GeneralPoint_EQN_L``, docs/study.md §3), its JSON-ish
  answer (docs/study.md §3) and its feedback turn ``"You failed this trial because {message}"`` (docs/study.md §3).
  ``chat=True``: the caller renders it through a tokenizer's chat template.
* ``compact``: the tiny model's short plain-text form, ``"J Q 7 9|11 12 13|"`` followed by the
  formula. Its feedback turn renders the same verdict as the paper's sentence, in symbols:
  ``!`` + the kind of fault + the invalid or over-used numbers + ``|`` + the unused numbers +
  ``|`` (:func:`compact_feedback`), e.g. ``!n10|11 7|`` for "you used invalid numbers: [10], you
  didn't use numbers: [11, 7]." It ends in ``|`` like the prompt, so every answer follows a ``|``.

Parsing never evaluates text (no ``eval``, no ``ast.literal_eval``) and never raises.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sftrl.game import Verdict, card_to_rank, face_values, hand_numbers

__all__ = [
    "COMPACT_ALPHABET",
    "COMPACT_FEEDBACK",
    "TEMPLATES",
    "Template",
    "compact_extract",
    "compact_feedback",
    "compact_prompt",
    "compact_response",
    "extract_formula",
    "face_card_msg",
    "get_template",
    "paper_feedback",
    "paper_prompt",
    "paper_response",
]

COMPACT_FEEDBACK = "!"  # starts every compact feedback turn
# The kind of fault, after the "!": the verdict's status (a correct answer gets no feedback).
COMPACT_FAULTS = {"illegal": "x", "wrong_numbers": "n", "no_solution": "v", "partial": "p"}
# An answer wrapper the SFT target never uses: the tiny base writes some answers as "[formula]"
# (data.pretrain_wrapped), a format error that SFT unlearns first, like the study's instruct
# models whose answers miss the JSON format before SFT.
COMPACT_WRAP = ("[", "]")
COMPACT_ALPHABET = (
    "0123456789AJQK |+-*/()" + COMPACT_FEEDBACK + "".join(COMPACT_FAULTS.values()) + "".join(COMPACT_WRAP)
)

# The study's template, quirks kept: leading and trailing newline, and face_card_msg (which ends
# in a period) is followed by ", and each card ..." and by "," in the output schema.
_PAPER_TEMPLATE = """
[Task Description]
You are an expert 24 points card game player. You will receive a set of 4 cards.
Note that {face_card_msg}, and each card must be used once.
Your goal is to output a formula that evaluates to 24 using numbers from the cards and operators such as '+', '-', '*', '/', '(', ')', and '='.

[Input]
Cards: {cards}

[Output]
{{
  "cards": [x, y, z, w], where {face_card_msg},
  "number": [a, b, c, d], where a, b, c, and d are the numbers on the cards,
  "formula": 'an equation that equals 24',
}}
"""

_PAPER_RESPONSE = """{{
  "cards": {cards},
  "number": {numbers},
  "formula": {formula}
}}"""


def _check_cards(cards: Sequence[str]) -> list[str]:
    if isinstance(cards, str):
        raise ValueError(f"cards must be a sequence of card strings, got the string {cards!r}")
    out = list(cards)
    for card in out:
        card_to_rank(card)  # ValueError naming the bad card and the valid ones
    return out


def face_card_msg(rule: str | Sequence[int]) -> str:
    """The study's sentence about face cards (ends with a period)."""
    j, q, k = face_values(rule)
    if j == q == k:
        return f"'J', 'Q', and 'K' count as '{j}'."
    return f"'J', 'Q', and 'K' count as '{j}', '{q}', and '{k}' respectively."


def paper_prompt(cards: Sequence[str], rule: str | Sequence[int]) -> str:
    """The study's user turn for a hand (docs/study.md §3), character for character."""
    cards = _check_cards(cards)
    return _PAPER_TEMPLATE.format(face_card_msg=face_card_msg(rule), cards=repr(cards))


def paper_response(cards: Sequence[str], rule: str | Sequence[int], formula: str) -> str:
    """The study's SFT target (docs/study.md §3).

    ``number`` holds the rule-mapped values as strings; the formula is written as a JSON string
    (identical to the study's for solver formulas, escaped if it ever contains quotes).
    """
    cards = _check_cards(cards)
    numbers = [str(n) for n in hand_numbers(cards, rule)]
    return _PAPER_RESPONSE.format(
        cards=repr(cards), numbers=repr(numbers), formula=json.dumps(formula, ensure_ascii=False)
    )


def paper_feedback(verdict: Verdict | str) -> str:
    """The verifier's next user turn (the study's sentence): ``You failed this trial because ...``."""
    message = verdict if isinstance(verdict, str) else verdict.message
    return f"You failed this trial because {message}"


def _compact_numbers(values) -> str:
    # over-long number tokens are kept as "huge:<digits>" by the verifier; "?" stands for one
    return " ".join(str(v) if isinstance(v, int) else "?" for v in values)


def compact_feedback(verdict: Verdict) -> str:
    """The verdict in the compact alphabet: ``!`` + kind + wrong numbers + ``|`` + unused + ``|``.

    Kinds: ``x`` illegal (format), ``n`` wrong numbers, ``v`` right numbers but not 24,
    ``p`` an unfinished prefix of a solution. ``!n10|11 7|``, ``!n|3|``, ``!v||``, ``!x||``.
    """
    kind = COMPACT_FAULTS.get(verdict.status)
    if kind is None:
        raise ValueError(f"no feedback for a verdict with status {verdict.status!r}")
    return f"{COMPACT_FEEDBACK}{kind}{_compact_numbers(verdict.wrong)}|{_compact_numbers(verdict.unused)}|"


def compact_prompt(cards: Sequence[str], rule: str | Sequence[int]) -> str:
    """``"J Q 7 9|11 12 13|"``: the cards, then the J Q K values under ``rule``."""
    cards = _check_cards(cards)
    return " ".join(cards) + "|" + " ".join(str(v) for v in face_values(rule)) + "|"


def compact_response(cards: Sequence[str], rule: str | Sequence[int], formula: str) -> str:
    """The compact target: the formula alone."""
    _check_cards(cards)
    face_values(rule)
    return formula


def compact_extract(text: str) -> str | None:
    """The first line of ``text``, stripped; None if that is empty."""
    if not isinstance(text, str):
        return None
    line = text.strip().split("\n", 1)[0].strip()
    return line or None


# --- extraction of the "formula" field -------------------------------------------------------

_KEY = r"""(?:"formula"|'formula')\s*:\s*"""
_DOUBLE_RE = re.compile(_KEY + r'"((?:[^"\\\n]|\\.)*)"')
_SINGLE_RE = re.compile(_KEY + r"'((?:[^'\\\n]|\\.)*)'")
_BARE_RE = re.compile(_KEY + r"""([^\s"',}\]][^,\n}]*)""")
_STUDY_RE = re.compile(r'"formula": "(.*?)"')


def _unescape(raw: str, quote: str) -> str:
    """Undo JSON-style escapes in a quoted value; the raw text if they are not valid JSON."""
    if "\\" not in raw:
        return raw
    body = raw if quote == '"' else raw.replace("\\'", "'").replace('"', '\\"')
    try:
        value = json.loads('"' + body + '"')
    except (ValueError, RecursionError):
        return raw
    return value if isinstance(value, str) else raw


def extract_formula(text: str) -> str | None:
    """The ``formula`` field of a model's JSON-ish answer, or None when there is none.

    Tries, in order: strict JSON of the whole text (the study's ``json.loads``); the first
    ``"formula"``/``'formula'`` key followed by a double-quoted, single-quoted or bare value
    (tolerating single quotes, trailing commas, unquoted cards in other fields, code fences and
    text around the object); the study's regex ``"formula": "(.*?)"``. The value is returned as
    written (whitespace included: judging it is the verifier's business). Never raises.
    """
    try:
        return _extract(text)
    except Exception:  # defensive: parsing model output must never crash a run
        return None


def _extract(text: str) -> str | None:
    if not isinstance(text, str):
        return None
    if "formula" not in text:
        return None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("formula"), str):
        return obj["formula"]

    candidates = []
    for regex, quote in ((_DOUBLE_RE, '"'), (_SINGLE_RE, "'"), (_BARE_RE, "")):
        m = regex.search(text)
        if m:
            candidates.append((m.start(), regex, quote, m))
    if candidates:
        _, regex, quote, m = min(candidates, key=lambda c: c[0])
        value = m.group(1)
        if quote:
            return _unescape(value, quote)
        value = value.strip()
        if value:
            return value
    m = _STUDY_RE.search(text)
    return m.group(1) if m else None


# --- templates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """A prompt format: how to ask, what to answer, how to give feedback and read answers."""

    name: str
    chat: bool
    _prompt: Callable[[Sequence[str], str | Sequence[int]], str] = field(repr=False)
    _response: Callable[[Sequence[str], str | Sequence[int], str], str] = field(repr=False)
    _feedback: Callable[[Verdict], str] = field(repr=False)
    _extract: Callable[[str], str | None] = field(repr=False)

    def prompt(self, cards: Sequence[str], rule: str | Sequence[int]) -> str:
        return self._prompt(cards, rule)

    def response(self, cards: Sequence[str], rule: str | Sequence[int], formula: str) -> str:
        return self._response(cards, rule, formula)

    def feedback(self, verdict: Verdict) -> str:
        """The verifier's turn after a failed attempt judged ``verdict``."""
        return self._feedback(verdict)

    def extract(self, text: str) -> str | None:
        return self._extract(text)


TEMPLATES: dict[str, Template] = {
    "paper": Template("paper", True, paper_prompt, paper_response, paper_feedback, extract_formula),
    "compact": Template(
        "compact",
        False,
        compact_prompt,
        compact_response,
        compact_feedback,
        compact_extract,
    ),
}


def get_template(name: str) -> Template:
    """The template called ``name``; ValueError naming the valid names otherwise."""
    try:
        return TEMPLATES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown prompt template {name!r}: expected one of {sorted(TEMPLATES)}") from None
