"""MSP: maximum softmax probability as confidence, with abstention (arXiv 2402.13213, docs/design.md §5).

Two confidence modes, recorded by name in every result (`extra.msp_mode`):

- `letters`: the scoring layer's letter probabilities renormalised over the option letters; confidence = their max.
- `generate` (the paper's): greedy generation after the lettered prompt, the answer parsed with
  `catto.eval.answer_parsing.parse_answer` ("X." first, then option text, then a bare letter); confidence = the
  full-vocabulary softmax max at the generated token that emitted the answer (for greedy decoding, the probability of
  that token). An unparseable generation is wrong with MSP 0 (prediction None, confidence 0). Its `option_probs`
  put the confidence on the parsed option and spread the rest evenly (uniform when unparsed): a top-label
  distribution, since generation gives no per-option probabilities.

`fit` picks the abstention thresholds on the labelled items (the paper: 20; `catto eval --fit-first 20`) that maximise
the score (+1 correct, 0 abstain, -1 "balanced" / -2 "conservative" per wrong answer), both penalties; `evaluate`
sets `abstain` from the one named by `penalty`; `summarize` reports the scores with and without abstention, the AUROC
with its bootstrap interval and the Mann-Whitney U p-value of MSP(correct) vs MSP(wrong).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.items import MCQAItem
from ..data.prompts import apply_chat_template
from ..eval.answer_parsing import parse_answer
from ..eval.results import ItemResult
from ..eval.scoring import left_padded_batch, model_device, pad_token_id
from .abstention import (
    PENALTIES,
    abstention_summary,
    mann_whitney_u_test,
    select_threshold,
)
from .base import Evaluator, ScoringFields, register_method

MSP_MODES = ("letters", "generate")


@dataclasses.dataclass
class MSPConfig(ScoringFields):
    mode: str = dataclasses.field(default="letters", metadata={
        "help": "letters: max over letter-renormalised probabilities; generate: the paper's full-vocabulary "
                "probability at the greedily generated answer letter.", "choices": list(MSP_MODES)})
    penalty: str = dataclasses.field(default="balanced", metadata={
        "help": "Which fitted threshold sets `abstain`: balanced (-1 per wrong answer) or conservative (-2); both "
                "are reported.", "choices": list(PENALTIES)})
    max_new_tokens: int = dataclasses.field(default=16, metadata={"help": "Generation length in generate mode."})
    bootstrap: int = dataclasses.field(default=1000, metadata={"help": "Bootstrap resamples of the AUROC interval."})
    seed: int = dataclasses.field(default=0, metadata={"help": "Seed of the bootstrap resamples."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MSP_MODES:
            raise ValueError(f"`mode` must be one of {list(MSP_MODES)}, got {self.mode!r}.")
        if self.penalty not in PENALTIES:
            raise ValueError(f"`penalty` must be one of {list(PENALTIES)}, got {self.penalty!r}.")
        if self.mode == "letters" and self.scoring != "letter":
            raise ValueError("MSP mode `letters` reads letter scoring: set `scoring='letter'` (or `--scoring letter`), "
                             "or use `mode='generate'`.")
        for name in ("max_new_tokens", "bootstrap"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < (1 if name == "max_new_tokens" else 0):
                raise ValueError(f"`{name}` must be a non-negative integer (>= 1 for max_new_tokens), got "
                                 f"{getattr(self, name)!r}.")


def _top_label_probs(n: int, index: int | None, confidence: float) -> list[float]:
    if index is None or n == 1:
        return [1.0 / n] * n
    rest = (1.0 - confidence) / (n - 1)
    return [confidence if k == index else rest for k in range(n)]


@torch.no_grad()
def generate_msp(model, tokenizer, items: Sequence[MCQAItem], config: MSPConfig, progress: bool = False) -> list[ItemResult]:
    """The paper's MSP: greedy generation, parsed answer, full-vocabulary max probability at the answer token."""
    device = model_device(model)
    fmt = config.scoring_config().letter_format
    prompts = []
    for item in items:
        text = fmt.prompt(item)
        if config.chat_template:
            text = apply_chat_template(tokenizer, text.removesuffix("Answer:").rstrip(), answer_prefix="Answer:")
        prompts.append(text)
    encoded = [tokenizer(p, add_special_tokens=not config.chat_template)["input_ids"] for p in prompts]
    pad = pad_token_id(tokenizer)
    eos = tokenizer.eos_token_id
    out: dict[int, ItemResult] = {}
    order = sorted(range(len(items)), key=lambda i: len(encoded[i]))
    bar = tqdm(total=len(items), desc="msp generate", unit="item", disable=not progress)
    for start in range(0, len(order), config.batch_size):
        idx = order[start:start + config.batch_size]
        ids, mask, _ = left_padded_batch([encoded[i] for i in idx], pad, device)
        gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=config.max_new_tokens,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=pad, eos_token_id=eos)
        new = gen.sequences[:, ids.shape[1]:]
        probs = torch.stack(gen.logits, 1).float().softmax(-1)  # (batch, steps, vocab), raw logits
        for row, i in enumerate(idx):
            item = items[i]
            tokens = new[row].tolist()
            if eos is not None and eos in tokens:
                tokens = tokens[: tokens.index(eos)]
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            parsed = parse_answer(text, item.choices, item.letters)
            step, conf = None, 0.0
            if parsed is not None:
                for j in range(len(tokens)):  # the first token whose decoded prefix reaches the answer's start
                    if len(tokenizer.decode(tokens[: j + 1], skip_special_tokens=True)) > parsed.start:
                        step = j
                        break
                conf = float(probs[row, step].max()) if step is not None else 0.0
            pred = parsed.index if parsed is not None else None
            out[i] = ItemResult(
                id=item.id, option_probs=_top_label_probs(len(item.choices), pred, conf), prediction=pred,
                confidence=conf, gold=item.gold, correct=None if item.gold is None else pred == item.gold,
                source=item.source, subject=item.subject,
                extra={"msp_mode": "generate", "generation": text, "parse_rule": parsed.rule if parsed else None,
                       "answer_step": step})
        bar.update(len(idx))
    bar.close()
    return [out[i] for i in range(len(items))]


@register_method
class MSPEvaluator(Evaluator):
    """Max softmax probability with an abstention threshold fitted on a few labelled items.

    Example:
        >>> from catto.data.synthetic import make_model, make_tokenizer, MCQA_VOCAB
        >>> from catto.data import MCQAItem
        >>> items = [MCQAItem(f"q{i}", "w1 w2", ("w3", "w4"), gold=i % 2) for i in range(8)]
        >>> model, tok = make_model(vocab_size=len(MCQA_VOCAB)), make_tokenizer(MCQA_VOCAB)
        >>> msp = MSPEvaluator(mode="letters").fit(model, tok, items[:4])
        >>> sorted(msp.thresholds) == ["balanced", "conservative"]
        True
        >>> all(r.abstain is not None for r in msp.evaluate(model, tok, items[4:]))
        True
    """

    name = "msp"
    config_class = MSPConfig
    needs_labels = True

    def __init__(self, config: MSPConfig | None = None, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.thresholds: dict[str, float] = {}
        self.train_scores: dict[str, float] = {}
        self.n_fit = 0

    @classmethod
    def report_config(cls, shared: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
        """MSP's letters mode reads letter scoring whatever scoring the report's other methods use (the paper's
        setting); a `--set msp.mode=...` leaves the report's choice."""
        values = dict(shared)
        if "mode" not in overrides and "scoring" in values:
            values["scoring"] = "letter"
        return values

    def _confidences(self, model, tokenizer, items: Sequence[MCQAItem]) -> list[ItemResult]:
        if self.config.mode == "generate":
            return generate_msp(model, tokenizer, items, self.config, progress=self.progress)
        results = self.config.score(model, tokenizer, items, progress=self.progress)
        return [dataclasses.replace(r, extra={**r.extra, "msp_mode": "letters"}) for r in results]

    def fit(self, model, tokenizer, items: Sequence[MCQAItem]) -> MSPEvaluator:
        super().fit(model, tokenizer, items)
        results = self._confidences(model, tokenizer, items)
        conf = [r.confidence for r in results]
        correct = [r.prediction is not None and bool(r.correct) for r in results]
        for name, penalty in PENALTIES.items():
            choice = select_threshold([(conf, correct)], penalty)
            self.thresholds[name], self.train_scores[name] = choice.threshold, choice.score
        self.n_fit = len(items)
        return self

    def evaluate(self, model, tokenizer, items: Sequence[MCQAItem]) -> list[ItemResult]:
        results = self._confidences(model, tokenizer, items)
        if not self.thresholds:
            return results
        threshold = self.thresholds[self.config.penalty]
        return [dataclasses.replace(r, abstain=bool(r.confidence < threshold)) for r in results]

    def summarize(self, results: Sequence[ItemResult]) -> dict[str, Any]:
        from ..eval.metrics import auroc, bootstrap_ci

        conf = np.array([r.confidence for r in results], dtype=float)
        correct = np.array([r.prediction is not None and bool(r.correct) for r in results])
        out: dict[str, Any] = {"mode": self.config.mode, "n": int(conf.size)}
        if conf.size == 0:
            return out
        if correct.all() or not correct.any():
            out["auroc"] = {"value": None, "reason": "needs both correct and wrong answers"}
        else:
            entry = {"value": auroc(conf, correct)}
            if self.config.bootstrap > 0:
                _, low, high = bootstrap_ci(auroc, conf, correct, n_resamples=self.config.bootstrap,
                                            seed=self.config.seed)
                entry.update(ci=[low, high], ci_level=0.95, n_resamples=self.config.bootstrap)
            out["auroc"] = entry
        out["mann_whitney"] = mann_whitney_u_test(conf, correct)
        out["abstention"] = {name: {**abstention_summary(conf, correct, self.thresholds[name], penalty),
                                    "train_score": self.train_scores[name], "n_fit": self.n_fit}
                             for name, penalty in PENALTIES.items() if name in self.thresholds}
        return out

    def state_json(self) -> dict[str, Any]:
        return {"thresholds": self.thresholds, "train_scores": self.train_scores, "n_fit": self.n_fit}

    def load_state(self, tensors, state) -> None:
        super().load_state(tensors, {})
        self.thresholds = {k: float(v) for k, v in state.get("thresholds", {}).items()}
        self.train_scores = {k: float(v) for k, v in state.get("train_scores", {}).items()}
        self.n_fit = int(state.get("n_fit", 0))
