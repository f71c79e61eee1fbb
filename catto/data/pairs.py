"""MCQA items -> DPO preference data in TRL's format.

The prompt of a pair is the same text catto's scoring reads (`LetterFormat.prompt`, `ClozeFormat.context`), so a
model is trained on exactly the context it is evaluated on; the chosen completion is the gold answer, the rejected
one a wrong option.

Example:
    >>> from catto.data import MCQAItem
    >>> pairs = mcqa_to_preference([MCQAItem("q1", "2 + 2 = ?", ("3", "4"), gold=1)])
    >>> pairs[0]["prompt"].splitlines()[-1], pairs[0]["chosen"], pairs[0]["rejected"]
    ('Answer:', ' B', ' A')
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from datasets import Dataset

from .items import MCQAItem, MCQAValidationError
from .prompts import ClozeFormat, LetterFormat, OptionsFormat

REJECTED_MODES = ("random", "all")
PROMPT_FORMATS = ("letter", "cloze", "options")
RejectedFn = Callable[[MCQAItem, random.Random], Iterable[int]]

# In chat form the answer frame moves into the assistant turn, as `catto.eval.scoring` does with a chat template: the
# model then sees "<generation prompt>Answer: B" in training and in evaluation alike.
_ANSWER_FRAME = "Answer:"


def _format(prompt_format: str | LetterFormat | ClozeFormat) -> LetterFormat | ClozeFormat:
    if isinstance(prompt_format, (LetterFormat, ClozeFormat)):
        return prompt_format
    if prompt_format == "letter":
        return LetterFormat()
    if prompt_format == "cloze":
        return ClozeFormat()
    if prompt_format == "options":
        return OptionsFormat()
    raise ValueError(f"prompt_format must be one of {list(PROMPT_FORMATS)} or a LetterFormat/ClozeFormat instance, "
                     f"got {prompt_format!r}.")


def _render(item: MCQAItem, fmt: LetterFormat | ClozeFormat, fewshot: Sequence[MCQAItem]) -> tuple[str, list[str]]:
    """(prompt text, one completion per option), each completion as appended to the prompt in plain text."""
    if isinstance(fmt, LetterFormat):
        return fmt.prompt(item, fewshot), [" " + letter for letter in item.letters]
    shots = []
    for shot in fewshot:
        if shot.gold is None:
            raise MCQAValidationError(f"Few-shot demonstration {shot.id!r} has no gold label; use labelled items.")
        shots.append(fmt.context(shot) + fmt.continuations(shot)[shot.gold])
    # Same separator as LetterFormat's default between demonstrations.
    return "\n\n".join(shots + [fmt.context(item)]), fmt.continuations(item)


def _rejected_indices(item: MCQAItem, rejected: str | RejectedFn, rng: random.Random) -> list[int]:
    wrong = [i for i in range(len(item.choices)) if i != item.gold]
    if rejected == "random":
        return [rng.choice(wrong)]
    if rejected == "all":
        return wrong
    if not callable(rejected):
        raise ValueError(f"rejected must be one of {list(REJECTED_MODES)} or a callable(item, rng) -> list[int], got "
                         f"{rejected!r}.")
    picked = list(rejected(item, rng))
    bad = [j for j in picked if isinstance(j, bool) or not isinstance(j, int) or j not in wrong]
    if not picked or bad:
        raise MCQAValidationError(
            f"MCQA item {item.id!r}: the `rejected` callable returned {picked}; it must return a non-empty list of "
            f"wrong option indices (here any of {wrong}; gold is {item.gold})."
        )
    return picked


def _chat(prompt: str, completion: str) -> tuple[list[dict], list[dict]]:
    user = prompt
    answer = completion.strip()
    if prompt.endswith(_ANSWER_FRAME):
        user = prompt[: -len(_ANSWER_FRAME)].rstrip()
        answer = f"{_ANSWER_FRAME} {answer}"
    return [{"role": "user", "content": user}], [{"role": "assistant", "content": answer}]


def mcqa_to_preference(items: Iterable[MCQAItem], *, prompt_format: str | LetterFormat | ClozeFormat = "letter",
                       rejected: str | RejectedFn = "random", conversational: bool = False, seed: int = 0,
                       fewshot: Sequence[MCQAItem] = ()) -> Dataset:
    """Turn labelled MCQA items into a DPO preference dataset (TRL's explicit-prompt format).

    Args:
        items: labelled items (an unlabelled one is an `MCQAValidationError` naming it).
        prompt_format: "letter" (`LetterFormat()`: chosen/rejected are option letters, " B"), "cloze"
            (`ClozeFormat()`: they are option texts, " Paris"), "options" (`OptionsFormat()`: the options listed in
            the prompt, answered with an option's text), or a `LetterFormat`/`ClozeFormat` instance (e.g.
            `PLAIN_CLOZE` for HellaSwag).
        rejected: "random" (one wrong option per item), "all" (one row per wrong option), or a callable
            `(item, rng) -> list[int]` of wrong option indices (e.g. hard negatives picked by a model).
        conversational: False gives strings, the completion starting with a space (prompt + completion is the text
            catto's scoring reads). True gives message lists: prompt = [user], chosen/rejected = [assistant]; a
            prompt ending in "Answer:" moves that frame into the assistant turn ("Answer: B").
        seed: with the item id, seeds the per-item RNG for "random" and the callable: same seed, same pairs,
            whatever the item order.
        fewshot: solved demonstrations put before every prompt.

    Returns:
        A `datasets.Dataset` with `prompt`, `chosen`, `rejected` and the metadata columns `id` (item id, repeated
        for rejected="all"), `chosen_index`, `rejected_index`, `n_choices`, `source`, `subject`, `prompt_format`.

    Example:
        >>> from catto.data import MCQAItem
        >>> item = MCQAItem("q1", "Capital of France?", ("Rome", "Paris", "Oslo"), gold=1)
        >>> ds = mcqa_to_preference([item], prompt_format="cloze", rejected="all", conversational=True)
        >>> ds[0]["chosen"], list(ds["rejected_index"])
        ([{'role': 'assistant', 'content': 'Answer: Paris'}], [0, 2])
    """
    fmt = _format(prompt_format)
    format_name = ("letter" if isinstance(fmt, LetterFormat) else "options" if isinstance(fmt, OptionsFormat)
                   else "cloze")
    if rejected not in REJECTED_MODES if isinstance(rejected, str) else not callable(rejected):
        raise ValueError(f"rejected must be one of {list(REJECTED_MODES)} or a callable(item, rng) -> list[int], got "
                         f"{rejected!r}.")
    rows: list[dict[str, Any]] = []
    n_items = 0
    for item in items:
        n_items += 1
        if item.gold is None:
            raise MCQAValidationError(
                f"MCQA item {item.id!r}: no gold label; a preference pair needs the correct option. Fix: drop "
                "unlabelled items or load a labelled split."
            )
        rng = random.Random(f"{seed}/{item.id}")
        prompt, completions = _render(item, fmt, fewshot)
        for j in _rejected_indices(item, rejected, rng):
            if conversational:
                user, chosen = _chat(prompt, completions[item.gold])
                _, rejected_msg = _chat(prompt, completions[j])
                row = {"prompt": user, "chosen": chosen, "rejected": rejected_msg}
            else:
                row = {"prompt": prompt, "chosen": completions[item.gold], "rejected": completions[j]}
            row.update(id=item.id, chosen_index=item.gold, rejected_index=j, n_choices=len(item.choices),
                       source=item.source, subject=item.subject, prompt_format=format_name)
            rows.append(row)
    if not n_items:
        raise ValueError("mcqa_to_preference got no items.")
    return Dataset.from_list(rows)
