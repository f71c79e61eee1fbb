"""MCQA data: the item type, prompt formats, dataset adapters and MCQA -> preference pairs."""

from .items import LETTERS, MCQAItem, MCQAValidationError, letter_to_index
from .prompts import PLAIN_CLOZE, ClozeFormat, LetterFormat, apply_chat_template

__all__ = [
    "LETTERS",
    "PLAIN_CLOZE",
    "ClozeFormat",
    "LetterFormat",
    "MCQAItem",
    "MCQAValidationError",
    "apply_chat_template",
    "letter_to_index",
]
