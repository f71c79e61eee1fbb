"""The one multiple-choice item type every catto component reads, with validation that names what is wrong."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import DataError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class MCQAValidationError(DataError):
    """An MCQA item or dataset row that cannot be used; the message names the item, the field and the fix."""


@dataclass(frozen=True)
class MCQAItem:
    """One multiple-choice question.

    Args:
        id: stable identifier (used to resume scoring and to join results).
        question: the question stem (for HellaSwag-style items, the context to be continued).
        choices: option texts, in the order their letters A, B, C, ... are assigned.
        gold: index of the correct option, or `None` for an unlabelled item (label-free methods only).
        context: optional passage shown before the question (RACE, OpenBookQA facts).
        subject: optional subject or category (MMLU subject, ...).
        source: optional dataset name the item came from.

    Example:
        >>> item = MCQAItem("q1", "2 + 2 = ?", ("3", "4"), gold=1)
        >>> item.gold_letter, item.letters
        ('B', ('A', 'B'))
    """

    id: str
    question: str
    choices: tuple[str, ...]
    gold: int | None
    context: str | None = None
    subject: str | None = None
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", tuple(self.choices))
        where = f"MCQA item {self.id!r}" + (f" ({self.source})" if self.source else "")
        if not isinstance(self.question, str) or not self.question.strip():
            raise MCQAValidationError(f"{where}: `question` is empty; every item needs a question text.")
        if len(self.choices) < 2:
            raise MCQAValidationError(
                f"{where}: needs at least 2 `choices`, got {len(self.choices)}; drop the item or fix its options."
            )
        if len(self.choices) > len(LETTERS):
            raise MCQAValidationError(
                f"{where}: {len(self.choices)} `choices` but only {len(LETTERS)} option letters (A-Z) exist."
            )
        for i, choice in enumerate(self.choices):
            if not isinstance(choice, str) or not choice.strip():
                raise MCQAValidationError(f"{where}: choice {LETTERS[i]} (index {i}) is empty or not text: {choice!r}.")
        seen: dict[str, int] = {}
        for i, choice in enumerate(self.choices):
            key = choice.strip()
            if key in seen:
                raise MCQAValidationError(
                    f"{where}: choices {LETTERS[seen[key]]} and {LETTERS[i]} are the same text {key!r}; options "
                    "must be distinct for the probabilities to mean anything."
                )
            seen[key] = i
        if self.gold is not None:
            if isinstance(self.gold, bool) or not isinstance(self.gold, int):
                raise MCQAValidationError(f"{where}: `gold` must be an integer index, got {self.gold!r}.")
            if not 0 <= self.gold < len(self.choices):
                raise MCQAValidationError(
                    f"{where}: `gold` index {self.gold} is out of range for {len(self.choices)} choices "
                    f"(valid: 0-{len(self.choices) - 1}, letters {LETTERS[0]}-{LETTERS[len(self.choices) - 1]})."
                )

    @property
    def letters(self) -> tuple[str, ...]:
        """Option letters A, B, ... for this item's choices."""
        return tuple(LETTERS[: len(self.choices)])

    @property
    def gold_letter(self) -> str | None:
        return None if self.gold is None else LETTERS[self.gold]

    @property
    def is_labelled(self) -> bool:
        return self.gold is not None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["choices"] = list(self.choices)
        return out

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> MCQAItem:
        return cls(**{**row, "choices": tuple(row["choices"])})


def letter_to_index(letter: str, n_choices: int, *, item_id: str = "?") -> int:
    """Index of an option letter ("B" -> 1), with an error naming the item when it is beyond the choices."""
    key = str(letter).strip().upper()
    if len(key) != 1 or key not in LETTERS:
        raise MCQAValidationError(f"MCQA item {item_id!r}: {letter!r} is not an option letter (A-Z).")
    index = LETTERS.index(key)
    if index >= n_choices:
        raise MCQAValidationError(
            f"MCQA item {item_id!r}: answer letter {key} is beyond its {n_choices} choices "
            f"({LETTERS[0]}-{LETTERS[n_choices - 1]})."
        )
    return index
