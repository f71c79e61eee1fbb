"""`scoring`: the model's own option probabilities (letter or cloze), uncalibrated: the baseline every other method
is compared with, and `catto eval`'s default method.

Example:
    >>> from catto.data.synthetic import MCQA_VOCAB, make_model, make_tokenizer
    >>> from catto.data import MCQAItem
    >>> model, tok = make_model(vocab_size=len(MCQA_VOCAB)), make_tokenizer(MCQA_VOCAB)
    >>> method = ScoringMethod(scoring="cloze")
    >>> len(method.evaluate(model, tok, [MCQAItem("q1", "w1 w2", ("w3", "w4"), gold=0)]))
    1
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from ..data.items import MCQAItem
from ..eval.results import ItemResult
from .base import Evaluator, ScoringFields, register_method


@dataclasses.dataclass
class ScoringMethodConfig(ScoringFields):
    """The scoring layer's options (see `catto.methods.base.ScoringFields`)."""


@register_method
class ScoringMethod(Evaluator):
    """Letter or cloze option probabilities straight from the model (`catto.eval.scoring.score_items`)."""

    name = "scoring"
    config_class = ScoringMethodConfig
    resumable = True
    uses_fewshot = True

    def evaluate(self, model, tokenizer, items: Sequence[MCQAItem], *,
                 results_path: str | os.PathLike | None = None) -> list[ItemResult]:
        return self.config.score(model, tokenizer, items, fewshot=self.fewshot, results_path=results_path,
                                 progress=self.progress)
