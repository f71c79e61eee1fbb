"""`token`: held-out token calibration (`catto.eval.token`) as an evaluation method, the quantity the CATTO term
optimises.

Items are MCQA questions turned into answer-text (or letter) preference pairs, the gold answer preferred over one
random wrong option, exactly as `catto train`'s `mcqa_data` builds them; or preference rows given directly
(`catto eval --method token --data pairs:held_out.jsonl`). Over the response tokens of the chosen answers
(rejected reported apart): accuracy, mean confidence, ECE (equal-width and equal-mass, with its noise floor and a
debiased estimate), Brier, with intervals that resample pairs; per-pair records in `results.jsonl`; reliability
diagrams of the tokens.

Example:
    >>> from catto.data.synthetic import make_model, make_tokenizer, preference_dataset
    >>> method = TokenCalibration()
    >>> records = method.evaluate(make_model(), make_tokenizer(), preference_dataset(4))
    >>> summary = method.summarize(records)
    >>> sorted(summary), summary["chosen"]["n_sequences"]
    (['chosen', 'rejected', 'settings'], 4)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..data.items import MCQAItem
from ..errors import ConfigError
from ..eval.token import (
    TokenEvalConfig,
    TokenPairResult,
    format_token_table,
    summarize_token_results,
    token_calibration,
    token_curves,
)
from .base import EVAL_BATCH_SIZE_FLAG, Evaluator, EvaluatorConfig, register_method

PAIR_FORMATS = ("cloze", "letter", "options")


@dataclasses.dataclass
class TokenMethodConfig(EvaluatorConfig):
    """How MCQA items become pairs and how the pairs are tokenized and scored."""

    pair_format: str = dataclasses.field(default="cloze", metadata={
        "help": "MCQA items become answer-text pairs (cloze: ' Paris' vs ' Rome'; options: the same with the "
                "options listed in the prompt) or letter pairs (' B' vs ' A'), as catto train's mcqa_prompt_format.", "choices": list(PAIR_FORMATS)})
    conversational: bool = dataclasses.field(default=False, metadata={
        "help": "Build chat-message pairs from MCQA items (the chat template is applied, as catto train's "
                "mcqa_conversational)."})
    include_eos: bool = dataclasses.field(default=True, metadata={
        "help": "Count the EOS token TRL appends to string completions (it is trained on, like every response "
                "token); False scores the answer tokens only."})
    max_length: int = dataclasses.field(default=1024, metadata={
        "help": "Truncate prompt + response to this many tokens, keeping the start (DPOConfig.max_length)."})
    batch_size: int = dataclasses.field(default=8, metadata={"help": "Sequences per forward pass.",
                                                             **EVAL_BATCH_SIZE_FLAG})
    seed: int = dataclasses.field(default=0, metadata={"help": "Seed of the rejected-option draw of MCQA pairs."})

    def __post_init__(self) -> None:
        if self.pair_format not in PAIR_FORMATS:
            raise ConfigError(f"`pair_format` must be one of {list(PAIR_FORMATS)}, got {self.pair_format!r}.")
        for name, low in (("max_length", 2), ("batch_size", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                flag = f" (--{EVAL_BATCH_SIZE_FLAG['flag']})" if name == "batch_size" else ""
                raise ConfigError(f"`{name}`{flag} must be an integer >= {low}, got {value!r}.")

    def token_eval_config(self) -> TokenEvalConfig:
        return TokenEvalConfig(max_length=self.max_length, include_eos=self.include_eos, batch_size=self.batch_size)


@register_method
class TokenCalibration(Evaluator):
    """Token-level calibration of held-out responses (see the module docstring)."""

    name = "token"
    config_class = TokenMethodConfig
    record_type = TokenPairResult
    resumable = True
    accepts_pairs = True

    def pairs(self, items: Sequence[MCQAItem | Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Preference rows of `items` (MCQA items are turned into pairs; rows pass through)."""
        from ..data.pairs import mcqa_to_preference

        if all(isinstance(it, MCQAItem) for it in items):
            return list(mcqa_to_preference(items, prompt_format=self.config.pair_format, rejected="random",
                                           conversational=self.config.conversational, seed=self.config.seed))
        if any(isinstance(it, MCQAItem) for it in items):
            raise ConfigError("The token method got a mix of MCQA items and preference rows; pass one kind.")
        return [dict(it) for it in items]

    def evaluate(self, model, tokenizer, items, *, results_path: str | os.PathLike | None = None):
        return token_calibration(model, tokenizer, self.pairs(items), config=self.config.token_eval_config(),
                                 results_path=results_path, progress=self.progress)

    #: no per-question answers: the report shows the token table (`format_summary`) instead of the shared columns
    report_columns = ()

    @classmethod
    def format_summary(cls, method_metrics: Mapping[str, Any]) -> str:
        if "chosen" not in method_metrics or "rejected" not in method_metrics:
            return ""
        return format_token_table({"chosen": method_metrics["chosen"], "rejected": method_metrics["rejected"]})

    def summarize(self, records: Sequence[TokenPairResult]) -> dict[str, Any]:
        opts = self.metric_options
        out = summarize_token_results(records, n_bins=opts["n_bins"], n_resamples=opts["n_resamples"],
                                      seed=opts["seed"])
        out["settings"] = {**self.config.token_eval_config().to_dict(), "pair_format": self.config.pair_format,
                           "n_bins": opts["n_bins"], "n_resamples": opts["n_resamples"]}
        return out

    def write_plots(self, records: Sequence[TokenPairResult], folder: str, title: str) -> dict[str, str]:
        from ..eval.plots import reliability_diagrams

        path = reliability_diagrams(token_curves(records), os.path.join(folder, "token_reliability.png"),
                                    n_bins=self.metric_options["n_bins"], title=f"{title} · held-out tokens",
                                    unit="tokens")
        return {"token_reliability": path}
