"""Parse a generated answer to an MCQA question into an option index.

The MSP paper (arXiv 2402.13213) grades a generation in this order: an option letter followed by a period
("B." / "(B)."), then the text of an option, then a bare option letter ("B"). catto follows that order and also
returns *where* the answer is in the text (a character offset), so callers can read the probability of the token
that emitted it (MSP's full-vocabulary confidence, Confidence@k's answer-token confidence).

>>> parse_answer("The answer is B. Paris", ["Rome", "Paris", "Oslo"])
ParsedAnswer(index=1, rule='letter_period', start=14, end=15)
>>> parse_answer("I think it is Oslo", ["Rome", "Paris", "Oslo"])
ParsedAnswer(index=2, rule='option_text', start=14, end=18)
>>> parse_answer("Answer: (C)", ["Rome", "Paris", "Oslo"]).index
2
>>> parse_answer("no idea", ["Rome", "Paris", "Oslo"]) is None
True
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

PARSE_RULES = ("letter_period", "option_text", "bare_letter")


@dataclass(frozen=True)
class ParsedAnswer:
    """An option index parsed from text, the rule that found it, and the matched span `text[start:end]`.

    For the letter rules the span is the letter itself; for `option_text` it is the option text.
    """

    index: int
    rule: str
    start: int
    end: int


def _letters(n: int, letters: Sequence[str] | None) -> list[str]:
    letters = list(letters) if letters is not None else list(string.ascii_uppercase[:n])
    if len(letters) < n:
        raise ValueError(f"`letters` has {len(letters)} labels for {n} choices; pass one label per choice.")
    return letters[:n]


def parse_answer(text: str, choices: Sequence[str], letters: Sequence[str] | None = None,
                 rules: Sequence[str] = PARSE_RULES) -> ParsedAnswer | None:
    """Parse `text` into an index of `choices`, or `None` when no rule matches.

    Args:
        text: the generated answer.
        choices: the option texts, in letter order.
        letters: option labels (default "A", "B", ...).
        rules: the rules to try (a subset of `PARSE_RULES`, always tried in the order below); e.g.
            `("option_text",)` for a prompt that shows no letters, where a capital "A" is a word, not a label.

    Rules, in order (the first rule that matches wins; within a rule the earliest match in the text wins):

    1. `letter_period`: an option letter, optionally in parentheses, followed by "." or ")" and not preceded by a
       letter or digit ("B.", "(B).", "B)").
    2. `option_text`: the text of an option, case-insensitive, on word boundaries; when several options match at
       the same place the longest wins (so "New York City" beats "New York").
    3. `bare_letter`: an option letter standing alone as a word ("B", "(B)", "B:"), upper-case only, so that the
       English words "A" and "I" inside a sentence count only when they are option letters in upper case.
    """
    n = len(choices)
    if n == 0:
        raise ValueError("`choices` is empty; an MCQA item needs at least one option.")
    unknown = [r for r in rules if r not in PARSE_RULES]
    if unknown or not rules:
        raise ValueError(f"`rules` must be a non-empty subset of {list(PARSE_RULES)}, got {list(rules)}.")
    labels = _letters(n, letters)
    alternation = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))
    match = re.search(rf"(?<![A-Za-z0-9])\(?({alternation})(?:\.|\))", text) if "letter_period" in rules else None
    if match:
        return ParsedAnswer(labels.index(match.group(1)), "letter_period", match.start(1), match.end(1))
    best: tuple[int, int, int] | None = None  # (start, -length, index)
    lowered = text.lower()
    for index, choice in enumerate(choices if "option_text" in rules else ()):
        needle = choice.strip().lower()
        if not needle:
            continue
        for m in re.finditer(rf"(?<!\w){re.escape(needle)}(?!\w)", lowered):
            key = (m.start(), -len(needle), index)
            if best is None or key < best:
                best = key
            break
    if best is not None:
        start, neg_len, index = best
        return ParsedAnswer(index, "option_text", start, start - neg_len)
    match = re.search(rf"(?<![A-Za-z0-9])\(?({alternation})(?![A-Za-z0-9])", text) if "bare_letter" in rules else None
    if match:
        return ParsedAnswer(labels.index(match.group(1)), "bare_letter", match.start(1), match.end(1))
    return None
