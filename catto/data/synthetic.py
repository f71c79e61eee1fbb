"""A small, learnable synthetic MCQA generator (tests, demos, benchmarks) and the word list of catto's tiny
word-level test tokenizer (`catto.synthetic`), which is built from the same words so that every synthetic question
is in its vocabulary."""

from __future__ import annotations

import random

from .items import MCQAItem

SYNTHETIC_TASKS = ("copy", "alphabetical", "arithmetic")
# The tiny tokenizer's words (w0 .. w39): one source of truth for `catto.synthetic` and the "copy" task.
WORDS = [f"w{i}" for i in range(40)]

_ALPHA_WORDS = ("apple", "banana", "cherry", "delta", "eagle", "falcon", "garden", "harbor", "island", "jungle",
                "kettle", "lemon", "mango", "needle", "orange", "pepper", "quartz", "river", "salmon", "tiger",
                "umbrella", "violet", "walnut", "yellow", "zebra")


def synthetic_mcqa(n: int, n_choices: int = 4, seed: int = 0, task: str = "copy") -> list[MCQAItem]:
    """`n` simple, learnable MCQA items, deterministic for `seed`; the gold letter is uniform over positions.

    Tasks:
        - "copy" (default): the question is a few words w0..w39 followed by "?", and the answer is its first word.
          Every token is in `catto.synthetic.MCQA_VOCAB`, so the tiny word-level test models can learn it (in cloze
          form it is a copy task, in letter form the model must also find the option's letter).
        - "alphabetical": "Which word comes first in alphabetical order?" over English words.
        - "arithmetic": "What is a + b?" with numeric options near the sum.

    Example:
        >>> items = synthetic_mcqa(2, seed=1)
        >>> all(item.choices[item.gold] == item.question.split()[0] for item in items)
        True
    """
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"task must be one of {list(SYNTHETIC_TASKS)}, got {task!r}.")
    limits = {"copy": 40, "alphabetical": len(_ALPHA_WORDS), "arithmetic": 14}  # arithmetic: 13 non-negative offsets
    if not 2 <= n_choices <= limits[task]:
        raise ValueError(f"n_choices must be in 2..{limits[task]} for task {task!r}, got {n_choices}.")
    rng = random.Random(seed)
    items = []
    for i in range(n):
        question, gold_text, choices = _SYNTHETIC[task](rng, n_choices)
        rng.shuffle(choices)
        items.append(MCQAItem(id=f"synthetic-{task}-{seed}-{i}", question=question, choices=tuple(choices),
                              gold=choices.index(gold_text), source=f"synthetic_{task}"))
    return items


def _copy_item(rng: random.Random, k: int) -> tuple[str, str, list[str]]:
    words = rng.sample(WORDS, k)  # distinct options; the question shows the answer first, then some distractors
    shown = [words[0]] + rng.sample(words[1:], rng.randint(1, k - 1))
    return " ".join(shown) + " ?", words[0], words


def _alphabetical_item(rng: random.Random, k: int) -> tuple[str, str, list[str]]:
    words = rng.sample(_ALPHA_WORDS, k)
    return "Which word comes first in alphabetical order?", min(words), words


def _arithmetic_item(rng: random.Random, k: int) -> tuple[str, str, list[str]]:
    a, b = rng.randint(0, 50), rng.randint(0, 50)
    total = a + b
    offsets = rng.sample([d for d in range(-13, 14) if d and total + d >= 0], k - 1)
    return f"What is {a} + {b}?", str(total), [str(total)] + [str(total + d) for d in offsets]


_SYNTHETIC = {"copy": _copy_item, "alphabetical": _alphabetical_item, "arithmetic": _arithmetic_item}
