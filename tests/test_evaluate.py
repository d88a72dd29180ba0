"""The multi-turn evaluator on scripted answers, the summary statistics, and real generation."""

import math

import polars as pl
import pytest

from sftrl import data
from sftrl.evaluate import GenerationSettings, Generator, run_episodes, summarise, wilson_interval
from sftrl.models import build_tiny_model, build_tiny_tokenizer
from sftrl.prompts import paper_response


def _hands(numbers_list, heldout=None):
    n = len(numbers_list)
    return pl.DataFrame(
        {
            "hand_id": list(range(n)),
            "cards": [[str(x) for x in nums] for nums in numbers_list],
            "numbers": numbers_list,
            "heldout": heldout or [False] * n,
            "prompt": [f"hand {i}" for i in range(n)],
        }
    )


class Scripted:
    """Answers from a script per hand (keyed by the first prompt), one per call; records dialogues."""

    def __init__(self, script):
        self.script = script
        self.calls = []

    def __call__(self, dialogues):
        self.calls.append([list(d) for d in dialogues])
        out = []
        for d in dialogues:
            hand = int(d[0]["content"].split()[1])
            attempt = sum(m["role"] == "assistant" for m in d)
            out.append(self.script[hand][attempt])
        return out


def test_multi_turn_verdicts_turns_and_accuracy():
    hands = _hands([[4, 6, 1, 1], [3, 3, 8, 8], [2, 2, 6, 1]], heldout=[False, True, False])
    script = {
        0: ["4*6*1*1"],  # solved at once
        1: ["3+3+8+8", "8/(3-8/3)", "never asked"],  # wrong value, then the exact-arithmetic solution
        2: ["2 + 2", "10*2+4", "(2+2)*6*1"],  # illegal (spaces), wrong numbers, then solved on turn 3
    }
    gen = Scripted(script)
    rec = run_episodes(gen, hands, "compact", turns=3)
    assert rec["turns"].to_list() == [1, 2, 3]
    assert rec["solved"].to_list() == [True, True, True]
    assert rec["rewards"].to_list()[1] == [-1.0, 5.0]
    assert rec["statuses"].to_list()[2][:2] == ["illegal", "wrong_numbers"]
    assert rec["numbers_ok"].to_list() == [True, True, False]
    assert rec["format_error"].to_list() == [False, False, True]
    # only unfinished episodes are generated for, and the feedback turn follows each failure
    assert [len(c) for c in gen.calls] == [3, 2, 1]
    # the compact verdict: right numbers but not 24 ("!v||"); illegal (spaces), then 10 and 4 are not in the hand
    assert gen.calls[1][0][-1] == {"role": "user", "content": "!v||"}
    assert gen.calls[1][1][-1] == {"role": "user", "content": "!x||"}
    assert gen.calls[2][0][-1] == {"role": "user", "content": "!n10 4|2 6 1|"}
    # float arithmetic (the study's) misses 8/(3-8/3)
    rec_float = run_episodes(Scripted(script), hands, "compact", turns=2, arithmetic="float")
    assert rec_float["solved"].to_list() == [True, False, False]
    s = summarise(rec_float)
    assert s["n"] == 3 and s["solved"] == 1 and s["accuracy"] == pytest.approx(1 / 3)
    assert s["heldout_n"] == 1 and s["heldout_accuracy"] == 0.0
    assert s["mean_turns"] == pytest.approx(5 / 3)
    # first attempt and by turn: hand 0 on turn 1; hands 1 and 2 never within 2 float turns
    assert s["first_accuracy"] == pytest.approx(1 / 3) and s["solved_by_turn"] == [pytest.approx(1 / 3), 0.0]
    s3 = summarise(rec, turns=3)  # exact: hand 1 on turn 2, hand 2 on turn 3
    assert s3["solved_by_turn"] == [pytest.approx(1 / 3)] * 3 and s3["accuracy"] == 1.0
    assert s3["first_accuracy"] == pytest.approx(1 / 3) and s3["first_ci_low"] < 1 / 3 < s3["first_ci_high"]
    assert s3["extra_ten"] == 0.0  # first answers: "4*6*1*1", "3+3+8+8", "2 + 2" (not a formula)


def test_paper_template_feedback_and_unparseable_answers():
    hands = _hands([[4, 6, 1, 1]])
    answer = paper_response(["4", "6", "A", "A"], "id", "4*6+1-1")
    gen = Scripted({0: ["I think the answer is 24", answer]})
    rec = run_episodes(gen, hands, "paper", turns=2)
    assert rec["format_error"][0] and rec["solved"][0]
    feedback = gen.calls[1][0][-1]["content"]
    assert feedback.startswith("You failed this trial because ")


def test_generator_must_answer_every_dialogue():
    with pytest.raises(RuntimeError, match="answers"):
        run_episodes(lambda ds: [], _hands([[4, 6, 1, 1]]), "compact", turns=1)


def test_wilson_interval():
    lo, hi = wilson_interval(41, 234)  # the study's Llama peak, 17.52%
    assert lo == pytest.approx(0.1318, abs=1e-3) and hi == pytest.approx(0.2290, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_batched_generation_equals_one_at_a_time():
    # Left padding must not change greedy answers: a batch gives what each prompt gives alone.
    tok = build_tiny_tokenizer()
    arch = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, max_position_embeddings=64)
    model = build_tiny_model(arch, tok, 0)
    hands = data.make_eval("ood", 12, 42, "compact")
    dialogues = [[{"role": "user", "content": p}] for p in hands["prompt"]]
    batched = Generator(model, tok, "compact", GenerationSettings(max_new_tokens=8, batch_size=12))(dialogues)
    single = Generator(model, tok, "compact", GenerationSettings(max_new_tokens=8, batch_size=1))(dialogues)
    assert batched == single
    assert all(isinstance(a, str) for a in batched)
