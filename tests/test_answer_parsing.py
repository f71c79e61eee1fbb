"""The MSP paper's parsing order: "X." first, then option text, then a bare letter."""

from __future__ import annotations

import pytest

from catto.eval.answer_parsing import ParsedAnswer, parse_answer

CHOICES = ["New York", "New York City", "Boston", "A cat"]


@pytest.mark.parametrize(
    ("text", "index", "rule"),
    [
        ("B. New York City", 1, "letter_period"),
        ("Boston, so (C).", 2, "letter_period"),  # the letter rule beats an earlier option text
        ("D) A cat", 3, "letter_period"),
        ("It is New York City.", 1, "option_text"),  # longest option at the same place
        ("it is new york", 0, "option_text"),
        ("boston or new york", 2, "option_text"),  # earliest match
        ("Answer: C", 2, "bare_letter"),
        ("I pick A", 0, "bare_letter"),
        ("(A)", 0, "letter_period"),
    ],
)
def test_rules_and_order(text, index, rule):
    parsed = parse_answer(text, CHOICES)
    assert (parsed.index, parsed.rule) == (index, rule)
    if rule != "option_text":
        assert text[parsed.start:parsed.end] == "ABCD"[index]
    else:
        assert text[parsed.start:parsed.end].lower() == CHOICES[index].lower()


@pytest.mark.parametrize("text", ["", "no idea", "E.", "Bostonian", "ABC", "b"])
def test_unparseable(text):
    assert parse_answer(text, CHOICES) is None


def test_letter_beyond_choices_and_custom_labels():
    assert parse_answer("E.", ["x", "y"]) is None
    parsed = parse_answer("2.", ["x", "y"], letters=["1", "2"])
    assert (parsed.index, parsed.rule) == (1, "letter_period")
    with pytest.raises(ValueError, match="one label per choice"):
        parse_answer("A", ["x", "y"], letters=["1"])
    with pytest.raises(ValueError, match="empty"):
        parse_answer("A", [])


def test_rules_restrict_what_counts_as_an_answer():
    choices = ["bank", "shop"]
    assert parse_answer("A park", choices).rule == "bare_letter"  # "A" read as option A in a lettered prompt
    assert parse_answer("A park", choices, rules=("option_text",)) is None  # no letters shown: "A" is a word
    assert parse_answer("B. the bank", choices, rules=("option_text",)) == ParsedAnswer(0, "option_text", 7, 11)
    assert parse_answer("B. the bank", choices, rules=("letter_period", "option_text")).rule == "letter_period"
    with pytest.raises(ValueError, match="rules"):
        parse_answer("bank", choices, rules=("option_txt",))
    with pytest.raises(ValueError, match="rules"):
        parse_answer("bank", choices, rules=())
