"""Generated data sets: deterministic, on the right rule, held-out multisets respected."""

import random
import re

import polars as pl
import pytest

from sftrl import data
from sftrl.game import check_formula, hand_numbers, solve
from sftrl.prompts import compact_prompt, get_template


def test_eval_sets_are_deterministic_and_fixed_size():
    a = data.make_eval("ood", 50, 42, "compact")
    b = data.make_eval("ood", 50, 42, "compact")
    assert a.equals(b)
    assert a.height == 50
    assert not a.equals(data.make_eval("ood", 50, 43, "compact"))


def test_ood_hands_hold_a_face_card_and_use_the_ood_values():
    df = data.make_eval("ood", 100, 42, "compact")
    for cards, numbers in zip(df["cards"].to_list(), df["numbers"].to_list(), strict=True):
        assert set(cards) & {"J", "Q", "K"}
        assert numbers == hand_numbers(cards, "ood")
    assert df["prompt"][0].endswith("|11 12 13|")


def test_id_eval_and_sft_use_the_id_rule():
    df = data.make_eval("id", 100, 42, "compact")
    assert all(n == hand_numbers(c, "id") for c, n in zip(df["cards"].to_list(), df["numbers"].to_list(), strict=True))
    assert all(p.endswith("|10 10 10|") for p in df["prompt"])


def test_sft_answers_are_correct_solutions():
    df = data.make_sft(200, 0, "compact")
    for completion, numbers in zip(df["completion"], df["numbers"].to_list(), strict=True):
        assert check_formula(completion, numbers).solved


def test_paper_template_answers_are_scored_correct():
    from sftrl.prompts import extract_formula

    df = data.make_sft(20, 0, "paper")
    assert df["prompt"][0].startswith("\n[Task Description]")
    for completion, numbers in zip(df["completion"], df["numbers"].to_list(), strict=True):
        assert check_formula(extract_formula(completion), numbers).solved


def test_pretrain_states_per_example_face_values():
    df = data.make_pretrain(300, 2, "compact")
    assert df["face_values"].list.unique().list.len().max() > 1 or df["face_values"].n_unique() > 1
    for cards, fv, numbers, prompt in df.select("cards", "face_values", "numbers", "prompt").iter_rows():
        assert numbers == hand_numbers(cards, tuple(fv))
        assert prompt.endswith("|" + " ".join(map(str, fv)) + "|")
    # both the ID value (10) and the OOD values (11-13) are common
    values = pl.Series(df["face_values"].explode())
    assert (values == 10).sum() > 30 and (values >= 11).sum() > 100


def test_heldout_multisets_never_reach_training_data_and_are_flagged_in_eval():
    held = data.heldout_multisets(0.2, 1)
    assert len(held) == round(0.2 * 1820)
    for make in (data.make_sft, data.make_rl, data.make_pretrain):
        df = make(300, 0, "compact", held)
        assert not df["heldout"].any()
    ev = data.make_eval("id", 200, 42, "compact", held)
    assert 10 < ev["heldout"].sum() < 80  # flagged, not removed


def test_bad_split_is_rejected():
    with pytest.raises(ValueError, match="split"):
        data.make_eval("test", 10, 0, "compact")


def test_first_answer_is_the_same_for_the_same_numbers():
    df = data.make_sft(400, 0, "compact", answer="first")
    assert all(len(answers) == 1 for answers in _answers_by_numbers(df).values())
    rnd = data.make_sft(400, 0, "compact", answer="random")
    assert any(len(a) > 1 for a in _answers_by_numbers(rnd).values())


def _answers_by_numbers(df):
    out = {}
    for numbers, completion in zip(df["numbers"].to_list(), df["completion"], strict=True):
        out.setdefault(tuple(sorted(numbers)), set()).add(completion)
    return out


def test_unknown_answer_mode_is_named():
    with pytest.raises(ValueError, match="data.answer"):
        data.make_sft(10, 0, "compact", answer="best")


def test_pretrain_feedback_dialogues_and_wrapped_answers():
    df = data.make_pretrain(600, 3, "compact", feedback_fraction=0.3, wrapped_fraction=0.5)
    again = data.make_pretrain(600, 3, "compact", feedback_fraction=0.3, wrapped_fraction=0.5)
    assert df.equals(again)  # deterministic
    plain = data.make_pretrain(600, 3, "compact")
    assert df["cards"].to_list() == plain["cards"].to_list()  # the same hands, other texts
    tpl = get_template("compact")
    dialogues = wrapped = 0
    for cards, rule, numbers, prompt, completion in df.select(
        "cards", "face_values", "numbers", "prompt", "completion"
    ).iter_rows():
        start = compact_prompt(cards, tuple(rule))
        assert prompt.startswith(start)
        is_wrapped = completion.startswith("[") and completion.endswith("]")
        wrapped += is_wrapped
        answer = completion[1:-1] if is_wrapped else completion
        assert check_formula(answer, numbers).solved  # the right answer, in either style
        rest = prompt[len(start) :]
        if rest:
            dialogues += 1
            turns = re.findall(r"(.*?)(![xnvp][0-9 ?]*\|[0-9 ?]*\|)", rest)
            assert "".join(a + f for a, f in turns) == rest and 1 <= len(turns) <= 3, rest
            for attempt, feedback in turns:
                verdict = check_formula(tpl.extract(attempt), numbers)
                assert not verdict.solved and tpl.feedback(verdict) == feedback  # its own verdict
                assert attempt.startswith("[") == is_wrapped  # one style per dialogue
                if is_wrapped:
                    assert feedback == "!x||"
    assert 0.25 < dialogues / df.height < 0.35 and 0.45 < wrapped / df.height < 0.55


def test_wrong_attempts_are_mostly_the_face_value_mistake():
    rng = random.Random(0)
    cards, numbers = ["J", "Q", "7", "9"], [11, 12, 7, 9]
    solutions = solve(numbers)
    attempts = [data.wrong_attempt(rng, cards, numbers, solutions) for _ in range(200)]
    assert not any(check_formula(a, numbers).solved for a in attempts)
    invalid = [a for a in attempts if check_formula(a, numbers).status == "wrong_numbers"]
    assert len(invalid) > 120  # face values swapped (most) or one number changed
