"""Answer extraction against a hand-labelled fixture, the TRL reward functions and the majority vote."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from medssr.answers import (
    completion_text,
    correctness_reward,
    extract_answer,
    format_reward,
    majority_vote,
)

FIXTURE = Path(__file__).parent / "data" / "answers_fixture.jsonl"
CASES = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_fixture_is_large_and_tricky():
    assert len(CASES) >= 60
    notes = " ".join(case["note"] for case in CASES)
    for kind in ("truncated", "Based", "beyond", "lower case", "option text", "boxed", "bold"):
        assert kind in notes, kind
    assert any(case["strict"] is None and case["lenient"] is not None for case in CASES)


@pytest.mark.parametrize("mode", ["strict", "lenient"])
@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{c['note']}" for i, c in enumerate(CASES, 1)])
def test_extraction_matches_hand_labels(case, mode):
    got = extract_answer(case["text"], case["letters"], mode=mode, options=case["options"])
    assert got == case[mode], f"{mode}: {case['text']!r} ({case['note']})"


@pytest.mark.parametrize("case", CASES, ids=[f"{i}" for i in range(1, len(CASES) + 1)])
def test_lenient_agrees_with_strict_whenever_strict_answers(case):
    strict = extract_answer(case["text"], case["letters"], "strict", case["options"])
    if strict is not None:
        assert extract_answer(case["text"], case["letters"], "lenient", case["options"]) == strict


def test_only_the_questions_own_letters_are_returned():
    text = "The answer is D."
    assert extract_answer(text, "ABCD") == "D"
    assert extract_answer(text, "ABC") is None
    assert extract_answer(text, ["A", "B", "C", "D"]) == "D"


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="mode"):
        extract_answer("The answer is A", "AB", mode="loose")
    with pytest.raises(ValueError, match="letters"):
        extract_answer("The answer is A", ["AB"])


def test_completion_text_reads_chat_completions():
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "The answer is B."}]) == "The answer is B."
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "The answer "}, {"type": "text", "text": "is C."}]}]
    assert completion_text(parts) == "The answer is C."


def test_correctness_reward_with_chat_and_text_completions():
    completions = [
        [{"role": "assistant", "content": "Copper. The answer is C."}],
        "The answer is B.",
        "Answer: C",  # lenient only
        "The answer is E.",  # not an option
    ]
    target = ["C", "C", "C", "C"]
    letters = ["ABCD", "ABCD", "ABCD", "ABCD"]
    assert correctness_reward(completions, target, letters) == [1.0, 0.0, 0.0, 0.0]
    lenient = functools.partial(correctness_reward, mode="lenient")
    assert lenient(completions, target=target, letters=letters, trainer_state=None) == [1.0, 0.0, 1.0, 0.0]


def test_correctness_reward_handles_missing_target_and_list_letters():
    assert correctness_reward(["The answer is A"], [None], [["A", "B"]]) == [0.0]
    assert correctness_reward(["The answer is a"], ["a"], ["A,B"]) == [1.0]


def test_format_reward_pays_for_a_valid_strict_statement_only():
    completions = ["The answer is B.", "Answer: B", "The answer is F.", "The answer is Based on x."]
    assert format_reward(completions, letters=["ABCD"] * 4, prompts=None) == [1.0, 0.0, 0.0, 0.0]
    # partial credit: an answer only lenient extraction reads earns it; none, or an invalid letter, earns nothing
    assert format_reward([*completions, "I think the options are hard."], letters=["ABCD"] * 5, partial_credit=0.5) == [1.0, 0.5, 0.0, 0.0, 0.0]
    # an opening choice, SmolLM2's most common answer shape, earns it too; a letter the question lacks or a word does not
    opening = ["C. Mitochondrial", "(B) The second", "**A:** gene", "E. Other", "A patient with", "D.UTP"]
    assert format_reward(opening, letters=["ABCD"] * 6, partial_credit=0.5) == [0.5, 0.5, 0.5, 0.0, 0.0, 0.5]


def test_majority_vote():
    vote = majority_vote(["A", "A", "B", None, "A", "C"])
    assert (vote.label, vote.votes, vote.parsed) == ("A", {"A": 3, "B": 1, "C": 1}, 5)
    assert vote.agreement == pytest.approx(0.6)
    tie = majority_vote(["A", "B", None])
    assert tie.label is None and tie.agreement == pytest.approx(0.5)
    empty = majority_vote([None, None])
    assert (empty.label, empty.agreement, empty.parsed, empty.votes) == (None, 0.0, 0, {})
    assert majority_vote(["D"]).agreement == 1.0


def test_option_orders_are_seeded_balanced_and_distinct():
    from medssr.answers import option_orders

    orders = option_orders("ABCD", 8, seed=0, key="q1")
    assert orders == option_orders("ABCD", 8, seed=0, key="q1"), "the same seed and question give the same orders"
    assert orders != option_orders("ABCD", 8, seed=1, key="q1") and orders != option_orders("ABCD", 8, seed=0, key="q2")
    assert len(set(orders)) == 8 and all(sorted(order) == list("ABCD") for order in orders)
    for block in (orders[:4], orders[4:]):  # every run of k samples shows every option at every position once
        assert all(sorted(order[position] for order in block) == list("ABCD") for position in range(4))
    assert len(set(option_orders("ABC", 6, 0, "q"))) == 6, "no order repeats while unused ones remain"
    few = option_orders("AB", 5, 0, "q")
    assert len(few) == 5 and set(few) == {("A", "B"), ("B", "A")}, "with more samples than orders, orders repeat"


def test_a_choice_by_content_maps_back_to_the_questions_letter_in_every_order():
    from medssr.answers import majority_vote, option_orders, original_letter, shown_options

    options = {"A": "CFTR", "B": "DMD", "C": "HBB", "D": "FBN1", "E": "PAH"}
    for order in option_orders(options, 10, seed=3, key="cf"):
        shown = shown_options(options, order)
        assert sorted(shown.values()) == sorted(options.values())
        chosen = next(letter for letter, text in shown.items() if text == "HBB")  # the sample picks the option's content
        assert original_letter(chosen, "ABCDE", order) == "C"
        assert [options[original_letter(letter, "ABCDE", order)] for letter in shown] == list(shown.values())
    assert original_letter(None, "ABCDE", tuple("EDCBA")) is None
    # a sample that always picks the first position votes for every option alike once positions are balanced
    orders = option_orders(options, 5, seed=0, key="q")
    vote = majority_vote([original_letter("A", "ABCDE", order) for order in orders])
    assert vote.votes == {letter: 1 for letter in "ABCDE"} and vote.label is None
