"""Confidence@k: sample k answers per question and keep the one whose answer token is the most confident.

If confidences are calibrated, P(correct | c) = c, so under 0-1 loss the best single candidate to return is the one
with the largest c (Bayes-optimal among rules that pick one candidate by its own confidence). With an overconfident
or anti-calibrated model the same rule picks confidently wrong answers, which is why it pays off on calibrated
(CATTO-trained, or post-hoc temperature-scaled) models. The baselines come from the same samples:

- ``greedy``: one extra greedy ``generate`` per batch of questions (``do_sample=False``): the true greedy decode,
  independent of k.
- ``majority``: self-consistency, the most frequent parsed answer among the first k samples; its confidence is the
  vote share (votes / k).
- ``best_logprob``: the candidate with the highest sequence log-probability (best-of-k); confidence = exp(log-prob).
- ``confidence``: Confidence@k, the candidate with the highest answer-token confidence.

How the numbers are made (every choice is in ``ConfidenceAtKConfig`` and written next to the results):

- Candidates: one batched ``model.generate(do_sample=True, output_logits=True)`` per batch of questions giving k
  rows per question (each prompt runs once and its KV cache is repeated k times, ``share_prompt_cache``; or
  ``num_return_sequences=k``, which runs every prompt k times), seeded per batch (the seed is derived from ``seed`` and the batch's item ids, so a resumed run
  draws the same samples). Smaller k are evaluated on prefixes of the same ``max(k)`` samples.
- Confidences are read from the **raw** logits at the generation step that emitted the parsed answer label (the
  warped ``scores`` are after temperature / top-p): no second forward pass. The parsed span (a character offset in
  the decoded text) is mapped back to the token that emitted its first character by decoding token prefixes.
  ``confidence="letter"`` (default for MCQA): softmax over the option labels' tokens at that step (the same label
  token with the other letters substituted, e.g. "ĠB" -> "ĠA", "ĠC", ...; for an answer given as option text, the
  first token of each option text); ``"full_vocab"``: the answer token's full-vocabulary probability (the MSP
  paper's confidence); ``"sequence"``: exp of the candidate's sequence log-probability (a baseline). When the label
  alternatives cannot be formed (a tokenizer that merges the label differently), ``letter`` falls back to the
  full-vocabulary probability for that candidate and says so (``confidence_source``).
- Parsing: ``catto.eval.answer_parsing.parse_answer`` (the MSP paper's order: "X." first, then option text, then a bare
  letter), or a user parser ``parser(text, item) -> ParsedAnswer | None`` (``item`` is None for raw prompts, whose
  answers may be any hashable value). Unparseable candidates are kept in the output but never selected; a question
  whose first k candidates are all unparseable gets ``answer=None`` and a ``reason``, never an exception.
- Ties break deterministically: Confidence@k and best-of-k take the earliest sample among equal scores; majority
  takes, among answers with equal votes, the one whose first vote came earliest.
- An optional ``TemperatureCalibrator`` (one scalar T fitted by NLL with L-BFGS on the answer-step label logits of
  labelled items) rescales the ``letter`` confidences of models that are not calibrated.

Example:
    >>> from catto.data.synthetic import MCQA_VOCAB, make_model, make_tokenizer
    >>> from catto.data import MCQAItem
    >>> model, tok = make_model(vocab_size=len(MCQA_VOCAB)), make_tokenizer(MCQA_VOCAB)
    >>> items = [MCQAItem("q1", "w1 w2 ?", ("w3", "w4"), gold=0)]
    >>> out = confidence_at_k(model, tok, items, ConfidenceAtKConfig(k=4, max_new_tokens=3))
    >>> len(out[0].candidates), sorted(out[0].selections)
    (4, ['best_logprob', 'confidence', 'greedy', 'majority'])
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.items import MCQAItem
from ..data.prompts import LetterFormat, OptionsFormat, apply_chat_template
from ..eval.answer_parsing import PARSE_RULES, ParsedAnswer, parse_answer
from ..eval.results import ItemResult
from ..eval.scoring import left_padded_batch
from .base import EVAL_BATCH_SIZE_FLAG, Evaluator, register_method
from .temperature import fit_temperature

CONFIDENCE_KINDS = ("letter", "full_vocab", "sequence")
PROMPT_FORMATS = ("letter", "options")
SELECTORS = ("greedy", "majority", "best_logprob", "confidence")
Parser = Callable[[str, "MCQAItem | None"], "ParsedAnswer | None"]


def _help(text: str) -> dict:
    return {"help": text}


def _int_tuple(text: str) -> tuple[int, ...]:
    """`"1,2,4"` -> (1, 2, 4), for command-line flags."""
    import argparse

    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,4,8,16, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"values must be integers >= 1, got {text!r}")
    return values


def _k_values(text: str) -> int | tuple[int, ...]:
    """`--k 8` -> 8; `--k 1,2,4,8` -> (1, 2, 4, 8) (the values to report; the largest is sampled)."""
    values = _int_tuple(text)
    return values[0] if "," not in text else values


@dataclass(frozen=True)
class ConfidenceAtKConfig:
    """Every choice of a Confidence@k run (written next to its results)."""

    k: int = field(default=8, metadata={
        "help": "Samples per question (the largest k evaluated); on the command line also a comma list of the k "
                "values to report (--k 1,2,4,8,16 sets k=16 and ks=1,2,4,8,16).", "parse": _k_values})
    ks: tuple[int, ...] | None = field(default=None, metadata={
        "help": "The k values to report, each <= k, evaluated on prefixes of the same k samples (default 1, 2, 4, "
                "... and k).", "parse": _int_tuple})
    temperature: float = field(default=1.0, metadata=_help("Sampling temperature (> 0)."))
    top_p: float = field(default=1.0, metadata=_help("Nucleus sampling mass in (0, 1]; 1 disables it."))
    top_k: int = field(default=0, metadata=_help("Top-k sampling; 0 disables it (overrides the model's default)."))
    max_new_tokens: int = field(default=16, metadata=_help("Tokens generated per candidate."))
    confidence: str = field(default="letter", metadata=_help(
        "Answer confidence: letter (label probability renormalised over the option labels), full_vocab (the answer "
        "token's full-vocabulary probability) or sequence (exp of the sequence log-probability)."))
    greedy: bool = field(default=True, metadata=_help("Also run one greedy generate per batch (the greedy baseline)."))
    chat_template: bool = field(default=False, metadata=_help("Wrap MCQA prompts in the tokenizer's chat template."))
    prompt_format: str = field(default="letter", metadata={**_help(
        "MCQA prompt: letter (lettered options, `letter_format`; answers parsed as letters or option text) or options "
        "(the options listed without letters, as catto train's mcqa_prompt_format options; answers parsed as option "
        "text only, and the `letter` confidence renormalises over the options' first tokens)."),
        "choices": list(PROMPT_FORMATS)})
    answer_prefix: str = field(default="Answer:", metadata=_help(
        "Text the MCQA prompt ends with, right before the answer (kept after the chat template's generation prompt)."))
    letter_format: LetterFormat = field(default=LetterFormat(), metadata={
        "help": "How MCQA prompts are rendered (Python API only).", "cli": False})
    batch_size: int = field(default=4, metadata={**_help(
        "Questions per generate call (each becomes k rows; raw logits of batch_size * k rows are kept per step)."),
        **EVAL_BATCH_SIZE_FLAG})
    seed: int = field(default=0, metadata=_help("Sampling seed (combined with each batch's item ids)."))
    calibrate: bool = field(default=True, metadata=_help(
        "Whether `fit` (labelled items from --fit-data / --fit-first / --calibrate-on) fits a temperature to the letter "
        "confidences; False keeps the model's raw confidences (to compare how calibrated models themselves are)."))
    share_prompt_cache: bool = field(default=True, metadata=_help(
        "Run each prompt once and repeat its KV cache for the k samples (same samples as num_return_sequences=k, "
        "k times less prompt compute); False: generate(num_return_sequences=k) for models whose cache cannot be "
        "reordered."))

    def __post_init__(self) -> None:
        if isinstance(self.k, (tuple, list)):  # `--k 1,2,4,8,16`: the values to report, the largest sampled
            if self.ks is not None:
                raise ValueError("Give the k values either as a list in `k` or in `ks`, not both.")
            object.__setattr__(self, "ks", tuple(self.k))
            object.__setattr__(self, "k", max(self.k) if self.k else 0)
        if isinstance(self.letter_format, dict):  # a saved config (`to_dict`) read back
            object.__setattr__(self, "letter_format", LetterFormat(**self.letter_format))
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"`k` must be an integer >= 1, got {self.k!r}.")
        ks = self.ks if self.ks is not None else (*(2 ** i for i in range(self.k.bit_length())), self.k)
        ks = tuple(sorted(set(int(x) for x in ks)))
        if not ks or ks[0] < 1 or ks[-1] > self.k:
            raise ValueError(f"`ks` must be values in [1, k={self.k}], got {self.ks!r}; raise `k` or drop the larger.")
        object.__setattr__(self, "ks", ks)
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"`temperature` must be > 0, got {self.temperature!r} (the greedy baseline is separate).")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"`top_p` must be in (0, 1], got {self.top_p!r}.")
        if self.top_k < 0:
            raise ValueError(f"`top_k` must be >= 0 (0 disables it), got {self.top_k!r}.")
        if self.max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be >= 1, got {self.max_new_tokens!r}.")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"`prompt_format` must be one of {list(PROMPT_FORMATS)}, got {self.prompt_format!r}.")
        if self.confidence not in CONFIDENCE_KINDS:
            raise ValueError(f"`confidence` must be one of {list(CONFIDENCE_KINDS)}, got {self.confidence!r}.")
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` (--eval_batch_size) must be >= 1, got {self.batch_size!r}.")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ks"] = list(self.ks)
        out["letter_format"] = vars(self.letter_format)
        return out


# ------------------------------------------------------------------------------------------------------------------
# result types


@dataclass
class Candidate:
    """One sampled (or the greedy) answer.

    `answer` is the parsed answer (an option index for MCQA items) or None when unparseable; `answer_token` the
    index (in the generated tokens) of the token that emitted the answer label; `label_logits` the raw logits of
    the option labels' tokens at that step (MCQA, letter alternatives found); `confidence` the configured
    confidence (after the calibrator, if any) and `confidence_source` how it was obtained; `token_ids` the generated
    tokens up to and including the first EOS (`n_tokens` of them, all counted in `sequence_logprob`).
    """

    text: str
    answer: Hashable | None
    rule: str | None
    answer_token: int | None
    confidence: float | None
    confidence_source: str | None
    full_vocab_prob: float | None
    label_logits: list[float] | None
    sequence_logprob: float
    n_tokens: int
    token_ids: list[int] = field(default_factory=list)


@dataclass
class Selection:
    """What one selector returned for one question at one k (`answer` None with a `reason` when nothing parsed)."""

    answer: Hashable | None
    confidence: float
    candidate: int | None
    reason: str | None = None


@dataclass
class QuestionResult:
    """Per question: every candidate, the greedy decode, and `selections[selector][k]`."""

    id: str
    gold: Hashable | None
    candidates: list[Candidate]
    greedy: Candidate | None
    selections: dict[str, dict[int, Selection]]
    item: MCQAItem | None = None

    @property
    def selected(self) -> Selection:
        """Confidence@k's choice at the largest k."""
        per_k = self.selections["confidence"]
        return per_k[max(per_k)]

    def to_item_result(self, selector: str = "confidence", k: int | None = None,
                       temperature: float = 1.0) -> ItemResult:
        """The shared per-item result of `selector` at `k` (default the largest). `option_probs` is the label
        distribution (softmax of `label_logits / temperature`) at the selected candidate's answer step when known;
        otherwise the confidence on the prediction and the rest spread evenly (`extra.option_probs_kind`). A sampled
        answer need not be the argmax of its step's distribution: read `prediction` and `confidence`, not the
        argmax of `option_probs`."""
        per_k = self.selections[selector]
        sel = per_k[max(per_k) if k is None else k]
        n = len(self.item.choices) if self.item is not None else 0
        cand = None
        if sel.candidate is not None:
            cand = self.greedy if selector == "greedy" else self.candidates[sel.candidate]
        if cand is not None and cand.label_logits is not None and n:
            probs = torch.tensor(cand.label_logits, dtype=torch.float64).div(temperature).softmax(-1).tolist()
            kind = "label_softmax_at_answer_step"
        elif sel.answer is not None and n:
            rest = (1 - sel.confidence) / (n - 1) if n > 1 else 0.0
            probs = [sel.confidence if i == sel.answer else rest for i in range(n)]
            kind = "top_label_only"
        else:
            probs = [1.0 / n] * n if n else []
            kind = "uniform_no_answer"
        correct = None if self.gold is None else (sel.answer is not None and sel.answer == self.gold)
        return ItemResult(
            id=self.id, option_probs=probs, prediction=sel.answer if n else None, confidence=float(sel.confidence),
            gold=self.gold, correct=correct, source=getattr(self.item, "source", None),
            subject=getattr(self.item, "subject", None),
            extra={"selector": selector, "option_probs_kind": kind, "reason": sel.reason,
                   "selections": {s: {str(kk): asdict(v) for kk, v in d.items()} for s, d in self.selections.items()},
                   "candidates": [asdict(c) for c in self.candidates],
                   "greedy": asdict(self.greedy) if self.greedy is not None else None},
        )


# ------------------------------------------------------------------------------------------------------------------
# selection (pure functions; no model)


def select_by_score(answers: Sequence[Hashable | None], scores: Sequence[float | None]) -> int | None:
    """Index of the parseable candidate with the highest score (the earliest on ties), or None.

    >>> select_by_score([None, 1, 2, 1], [0.9, 0.4, 0.7, 0.7])
    2
    """
    best = None
    for i, (a, s) in enumerate(zip(answers, scores)):
        if a is None or s is None:
            continue
        if best is None or s > scores[best]:
            best = i
    return best


def select_majority(answers: Sequence[Hashable | None]) -> tuple[Hashable | None, int, int | None]:
    """(answer, votes, index of its first vote) of the most frequent parseable answer; equal votes go to the answer
    whose first vote came earliest. `(None, 0, None)` when nothing parsed.

    >>> select_majority([2, 0, 0, 2, None])
    (2, 2, 0)
    """
    votes: dict[Hashable, int] = {}
    first: dict[Hashable, int] = {}
    for i, a in enumerate(answers):
        if a is None:
            continue
        votes[a] = votes.get(a, 0) + 1
        first.setdefault(a, i)
    if not votes:
        return None, 0, None
    answer = min(votes, key=lambda a: (-votes[a], first[a]))
    return answer, votes[answer], first[answer]


def select_all(candidates: Sequence[Candidate], greedy: Candidate | None, ks: Sequence[int]) -> dict:
    """`{selector: {k: Selection}}` for every k on prefixes of `candidates`."""
    out: dict[str, dict[int, Selection]] = {s: {} for s in SELECTORS if s != "greedy" or greedy is not None}
    for k in ks:
        prefix = candidates[:k]
        answers = [c.answer for c in prefix]
        none = Selection(None, 0.0, None, f"none of the first {k} candidates could be parsed")
        i = select_by_score(answers, [c.confidence for c in prefix])
        out["confidence"][k] = none if i is None else Selection(prefix[i].answer, prefix[i].confidence, i)
        i = select_by_score(answers, [c.sequence_logprob for c in prefix])
        out["best_logprob"][k] = none if i is None else Selection(
            prefix[i].answer, math.exp(prefix[i].sequence_logprob), i)
        answer, votes, i = select_majority(answers)
        out["majority"][k] = none if answer is None else Selection(answer, votes / k, i)
        if greedy is not None:
            out["greedy"][k] = (Selection(None, 0.0, None, "the greedy decode could not be parsed")
                                if greedy.answer is None else Selection(greedy.answer, greedy.confidence, 0))
    return out


# ------------------------------------------------------------------------------------------------------------------
# post-hoc temperature scaling


def pad_label_logits(label_logits: Sequence[Sequence[float]],
                     labels: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged rows of label logits (one per candidate, as many as its item has options) and their gold labels as the
    `(N, K_max)` float64 logits padded with -inf and the `(N,)` labels that `catto.methods.temperature.fit_temperature`
    (catto's one temperature fit, and its search range) takes.

    >>> z, y = pad_label_logits([[4.0, 0.0], [1.0, 2.0, 3.0]], [0, 2])
    >>> z.tolist(), y.tolist()
    ([[4.0, 0.0, -inf], [1.0, 2.0, 3.0]], [0, 2])
    """
    if len(label_logits) != len(labels) or not labels:
        raise ValueError(f"fitting a temperature needs one label per logit row and at least one row; got "
                         f"{len(label_logits)} rows and {len(labels)} labels.")
    width = max(len(r) for r in label_logits)
    z = torch.full((len(labels), width), -torch.inf, dtype=torch.float64)
    for i, row in enumerate(label_logits):
        z[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
    y = torch.tensor(labels, dtype=torch.long)
    if (y < 0).any() or (y >= width).any() or not torch.isfinite(z.gather(1, y[:, None])).all():
        raise ValueError("fitting a temperature: a label points outside its row of logits.")
    if not torch.isfinite(z[z != -torch.inf]).all():
        raise ValueError("fitting a temperature: the logits contain NaN/inf.")
    return z, y


@dataclass(frozen=True)
class TemperatureCalibrator:
    """Post-hoc temperature scaling of the answer-step label logits (for `confidence="letter"`)."""

    temperature: float = field(default=1.0, metadata=_help("T > 0; label probabilities are softmax(logits / T)."))
    n_fit: int = field(default=0, metadata=_help("How many labelled candidates T was fitted on (0: not fitted)."))

    def __post_init__(self) -> None:
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"`temperature` must be a finite number > 0, got {self.temperature!r}.")


def fit_calibrator(results: Sequence[QuestionResult]) -> TemperatureCalibrator:
    """Fit T on every parsed candidate (samples and greedy) of labelled `results` that has label logits, with
    `catto.methods.temperature.fit_temperature` (the temperature method's fit and search range)."""
    rows, labels = [], []
    for r in results:
        if r.gold is None:
            continue
        for c in [*r.candidates, *([r.greedy] if r.greedy is not None else [])]:
            if c.label_logits is not None:
                rows.append(c.label_logits)
                labels.append(int(r.gold))
    if not rows:
        raise ValueError("No labelled candidate with label logits to fit the temperature on: the calibration items "
                         "need gold labels and parseable letter answers (confidence='letter').")
    return TemperatureCalibrator(fit_temperature(*pad_label_logits(rows, labels)), len(rows))


# ------------------------------------------------------------------------------------------------------------------
# generation


class _FiniteLogits:
    """Logits processor that stops generation with a clear error on NaN/inf logits (before sampling fails)."""

    def __call__(self, input_ids, scores):
        if not torch.isfinite(scores).all():
            raise FloatingPointError("The model produced NaN/inf logits during generation; check the dtype (fp16 "
                                     "overflows on some models; use bf16 or fp32) and the weights.")
        return scores


def mcqa_prompt(tokenizer, item: MCQAItem, config: ConfidenceAtKConfig) -> str:
    """The prompt of `item` in `config.prompt_format` (optionally in the chat template), ending with
    `config.answer_prefix`."""
    text = OptionsFormat().context(item) if config.prompt_format == "options" else config.letter_format.prompt(item)
    if config.chat_template:
        body = text.removesuffix("Answer:").rstrip()
        return apply_chat_template(tokenizer, body, answer_prefix=config.answer_prefix)
    return text.removesuffix("Answer:") + config.answer_prefix if text.endswith("Answer:") else text


def _batch_seed(seed: int, ids: Sequence[str]) -> int:
    return (seed * 1_000_003 + zlib.crc32("\x1f".join(ids).encode())) % (2 ** 63)


def _answer_token(tokenizer, ids: list[int], char_start: int) -> int | None:
    """Index of the token whose decoded text covers character `char_start` of the decoded text."""
    for j in range(len(ids)):
        if len(tokenizer.decode(ids[: j + 1], skip_special_tokens=True)) > char_start:
            return j
    return None


def _label_alternatives(tokenizer, emitted: int, parsed: ParsedAnswer, text: str, token_start: int,
                        item: MCQAItem) -> list[int] | None:
    """Token ids standing for each option at the answer step, or None when they cannot be formed consistently."""
    if parsed.rule in ("letter_period", "bare_letter"):
        piece = tokenizer.convert_ids_to_tokens(emitted)
        letter = item.letters[parsed.index]
        if isinstance(piece, str) and piece.count(letter) == 1:
            alts = tokenizer.convert_tokens_to_ids([piece.replace(letter, other) for other in item.letters])
            unk = tokenizer.unk_token_id
            if all(a is not None and a != unk for a in alts) and len(set(alts)) == len(alts):
                return list(alts)
        labels = list(item.letters)
    else:
        labels = list(item.choices)
    lead = text[token_start: parsed.start]  # e.g. the leading space the answer token carries
    alts = []
    for label in labels:
        toks = tokenizer(lead + label, add_special_tokens=False)["input_ids"]
        if not toks:
            return None
        alts.append(toks[0])
    if alts[parsed.index] != emitted or len(set(alts)) != len(alts):
        return None
    return alts


def _build_candidate(tokenizer, gen_ids: list[int], step_logits: Sequence[torch.Tensor], row: int, eos: set[int],
                     item: MCQAItem | None, parser: Parser | None, config: ConfidenceAtKConfig,
                     calibrator: TemperatureCalibrator | None) -> Candidate:
    n = len(gen_ids)
    for j, t in enumerate(gen_ids):
        if t in eos:
            n = j + 1  # the EOS token's log-prob counts; nothing after it does
            break
    logprob = 0.0
    for j in range(n):
        logprob += float(step_logits[j][row].float().log_softmax(-1)[gen_ids[j]])
    body = [t for t in gen_ids[:n] if t not in eos]
    text = tokenizer.decode(body, skip_special_tokens=True)
    if parser is not None:
        parsed = parser(text, item)
    else:  # a prompt without letters: a capital "A" in the answer is a word, not a label
        parsed = parse_answer(text, item.choices, item.letters,
                              rules=("option_text",) if config.prompt_format == "options" else PARSE_RULES)
    if parsed is None:
        return Candidate(text, None, None, None, None, None, None, None, logprob, n, gen_ids[:n])
    j = _answer_token(tokenizer, body, parsed.start)
    if j is None:  # a parser span outside the text
        return Candidate(text, None, None, None, None, None, None, None, logprob, n, gen_ids[:n])
    logits = step_logits[j][row].float()
    full = float(logits.softmax(-1)[body[j]])
    label_logits, source = None, None
    if item is not None and isinstance(parsed.index, int) and 0 <= parsed.index < len(item.choices):
        token_start = len(tokenizer.decode(body[:j], skip_special_tokens=True))
        alts = _label_alternatives(tokenizer, body[j], parsed, text, token_start, item)
        if alts is not None:
            label_logits = logits[alts].tolist()
    if config.confidence == "letter" and label_logits is not None:
        t = calibrator.temperature if calibrator is not None else 1.0
        conf = float((torch.tensor(label_logits, dtype=torch.float64) / t).softmax(-1)[parsed.index])
        source = "letter"
    elif config.confidence == "sequence":
        conf, source = math.exp(logprob), "sequence"
    else:
        conf = full
        source = "full_vocab" if config.confidence == "full_vocab" else "full_vocab_fallback"
    return Candidate(text, parsed.index, parsed.rule, j, conf, source, full, label_logits, logprob, n, gen_ids[:n])


def _generate(model, ids, mask, positions, config: ConfidenceAtKConfig, sample: bool, pad: int, eos: list[int],
              seed: int):
    """One `generate` call: k samples per question (`sample`) or the greedy decode. Returns the generated token ids
    per row (question b's samples are rows b*k .. b*k+k-1) and the raw logits per step.

    With `config.share_prompt_cache`, the prompts run through the model once, their KV cache (all but the last
    prompt token) is repeated k times and `generate` continues from it with the prompt rows repeated k times: the
    same rows and sampling as `num_return_sequences=k`, without running each prompt k times.
    """
    from transformers import LogitsProcessorList

    kwargs: dict[str, Any] = dict(
        max_new_tokens=config.max_new_tokens, output_logits=True, return_dict_in_generate=True, pad_token_id=pad,
        eos_token_id=eos, repetition_penalty=1.0, no_repeat_ngram_size=0, logits_processor=LogitsProcessorList(
            [_FiniteLogits()]))
    if sample:
        kwargs.update(do_sample=True, num_return_sequences=config.k, temperature=config.temperature,
                      top_p=config.top_p, top_k=config.top_k, typical_p=1.0)
    else:
        kwargs.update(do_sample=False, num_return_sequences=1, num_beams=1)
    if sample and config.share_prompt_cache and config.k > 1 and ids.shape[1] > 1:
        prefix = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                       use_cache=True, logits_to_keep=1)
        cache = prefix.past_key_values
        cache.reorder_cache(torch.arange(ids.shape[0], device=ids.device).repeat_interleave(config.k))
        ids, mask = ids.repeat_interleave(config.k, 0), mask.repeat_interleave(config.k, 0)
        kwargs.update(num_return_sequences=1, past_key_values=cache)
    devices = [ids.device] if ids.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    return out.sequences[:, ids.shape[1]:].tolist(), out.logits


@torch.no_grad()
def confidence_at_k(model, tokenizer, prompts_or_items: Sequence[MCQAItem | str],
                    config: ConfidenceAtKConfig = ConfidenceAtKConfig(), *, parser: Parser | None = None,
                    golds: Sequence[Hashable] | None = None, calibrator: TemperatureCalibrator | None = None,
                    on_batch: Callable[[list[QuestionResult]], None] | None = None,
                    progress: bool = False) -> list[QuestionResult]:
    """Sample `config.k` answers per question and select among them (Confidence@k, majority@k, best-of-k, greedy).

    Args:
        model, tokenizer: a causal LM and its tokenizer.
        prompts_or_items: MCQA items (prompted in `config.prompt_format`) or raw prompt strings (then `parser` is needed
            and `confidence` must be `full_vocab` or `sequence`).
        config: sampling, confidence and selection settings.
        parser: `parser(text, item) -> ParsedAnswer | None` (item None for raw prompts); default
            `catto.eval.answer_parsing.parse_answer` on the item's options.
        golds: gold answers of raw prompts (MCQA items carry their own).
        calibrator: temperature scaling of the `letter` confidences (see `fit_calibrator`).
        on_batch: called with each batch's results (e.g. to append them to a results file).

    Returns one `QuestionResult` per input, in order.
    """
    items = list(prompts_or_items)
    raw = [isinstance(x, str) for x in items]
    if any(raw) and not all(raw):
        raise ValueError("`prompts_or_items` mixes prompt strings and MCQA items; pass one kind per call.")
    if all(raw) and items:
        if parser is None:
            raise ValueError("Raw prompt strings need `parser(text, None) -> ParsedAnswer | None` to map generated "
                             "text to answers.")
        if config.confidence == "letter":
            raise ValueError("confidence='letter' needs MCQA items (their option labels); use 'full_vocab' or "
                             "'sequence' with raw prompts.")
        if calibrator is not None:
            raise ValueError("The temperature calibrator rescales letter confidences; it needs MCQA items.")
    if golds is not None and len(golds) != len(items):
        raise ValueError(f"`golds` has {len(golds)} entries for {len(items)} prompts.")
    if calibrator is not None and config.confidence != "letter":
        raise ValueError(f"A temperature calibrator only applies to confidence='letter', not {config.confidence!r}.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = model.generation_config.eos_token_id if tokenizer.eos_token_id is None else tokenizer.eos_token_id
    eos = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids or [])
    if pad is None or not eos:
        raise ValueError("The tokenizer needs an EOS token (and a pad token, or EOS used as pad) to generate.")
    device = next(model.parameters()).device

    from tqdm.auto import tqdm

    results: list[QuestionResult] = []
    bar = tqdm(total=len(items), desc="confidence@k", unit="question", disable=not progress)
    for start in range(0, len(items), config.batch_size):
        batch = items[start: start + config.batch_size]
        if raw[0]:
            prompts = list(batch)
            ids_ = [f"prompt-{start + i}" for i in range(len(batch))]
            encoded = [tokenizer(p)["input_ids"] for p in prompts]
        else:
            prompts = [mcqa_prompt(tokenizer, it, config) for it in batch]
            ids_ = [it.id for it in batch]
            encoded = [tokenizer(p, add_special_tokens=not config.chat_template)["input_ids"] for p in prompts]
        ids, mask, positions = left_padded_batch(encoded, pad, device)
        seed = _batch_seed(config.seed, ids_)
        sampled, logits = _generate(model, ids, mask, positions, config, True, pad, eos, seed)
        if config.greedy:
            greedy_ids, greedy_logits = _generate(model, ids, mask, positions, config, False, pad, eos, seed)
        batch_results = []
        for b, x in enumerate(batch):
            item = None if isinstance(x, str) else x
            cands = [_build_candidate(tokenizer, sampled[b * config.k + s], logits, b * config.k + s, set(eos), item,
                                      parser, config, calibrator) for s in range(config.k)]
            greedy = (_build_candidate(tokenizer, greedy_ids[b], greedy_logits, b, set(eos), item, parser, config,
                                       calibrator) if config.greedy else None)
            gold = item.gold if item is not None else (golds[start + b] if golds is not None else None)
            batch_results.append(QuestionResult(ids_[b], gold, cands, greedy, select_all(cands, greedy, config.ks),
                                                item))
        results.extend(batch_results)
        if on_batch is not None:
            on_batch(batch_results)
        bar.update(len(batch_results))
    bar.close()
    return results


# ------------------------------------------------------------------------------------------------------------------
# corpus summaries


def accuracy_vs_k(results: Sequence[QuestionResult | ItemResult], *, n_bins: int = 15,
                  binning: str = "equal_width") -> dict[str, dict[str, dict[str, float]]]:
    """`{selector: {k: {accuracy, ece, answered, mean_confidence}}}` over labelled results (unanswered questions
    count as wrong at confidence 0). Accepts `QuestionResult`s or the `ItemResult`s written by the CLI."""
    from ..eval.metrics import ece

    per: dict[str, dict[str, list]] = {}
    for r in results:
        if isinstance(r, ItemResult):
            gold, selections = r.gold, r.extra["selections"]
        else:
            gold = r.gold
            selections = {s: {str(k): asdict(v) for k, v in d.items()} for s, d in r.selections.items()}
        if gold is None:
            continue
        for s, d in selections.items():
            for k, sel in d.items():
                per.setdefault(s, {}).setdefault(k, []).append((sel["confidence"], sel["answer"] == gold,
                                                                sel["answer"] is not None))
    if not per:
        raise ValueError("accuracy_vs_k needs labelled results (gold answers).")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for s in SELECTORS:
        if s not in per:
            continue
        out[s] = {}
        for k in sorted(per[s], key=int):
            rows = np.array(per[s][k], dtype=float)
            conf, correct, answered = rows[:, 0], rows[:, 1], rows[:, 2]
            out[s][str(k)] = {"accuracy": float(correct.mean()), "ece": ece(conf, correct, n_bins, binning),
                              "answered": float(answered.mean()), "mean_confidence": float(conf.mean()), "n": len(rows)}
    return out


def parse_stats(results: Sequence[QuestionResult | ItemResult]) -> dict[str, Any]:
    """How often candidates parsed, by which rule, and how their confidences were obtained (from `QuestionResult`s
    or the `ItemResult`s they were written as)."""
    rules: dict[str, int] = {}
    sources: dict[str, int] = {}
    n = 0
    greedy_parsed = []
    for r in results:
        if isinstance(r, ItemResult):
            candidates, greedy = r.extra["candidates"], r.extra.get("greedy")
        else:
            candidates = [asdict(c) for c in r.candidates]
            greedy = asdict(r.greedy) if r.greedy is not None else None
        for c in candidates:
            n += 1
            rules[c["rule"] or "unparsed"] = rules.get(c["rule"] or "unparsed", 0) + 1
            if c["confidence_source"]:
                sources[c["confidence_source"]] = sources.get(c["confidence_source"], 0) + 1
        if greedy is not None:
            greedy_parsed.append(greedy["answer"] is not None)
    return {"n_candidates": n, "parsed_share": 1 - rules.get("unparsed", 0) / max(n, 1), "rules": rules,
            "confidence_sources": sources,
            "greedy_parsed_share": (sum(greedy_parsed) / len(greedy_parsed)) if greedy_parsed else None}


# ------------------------------------------------------------------------------------------------------------------
# the registered method (`catto eval --method confidence_at_k`, `catto report --methods ...,confidence_at_k`)


@register_method
class ConfidenceAtK(Evaluator):
    """Confidence@k as an evaluation method: per question, the record is Confidence@k's answer at the largest k
    (`QuestionResult.to_item_result`), with every candidate and every selector's choice at every k in `extra`;
    `summarize` gives accuracy and ECE vs k per selector. `fit` (optional: `--fit-data`, `--calibrate-on`) fits the
    temperature of the letter confidences on labelled items; without it the raw confidences are used."""

    name = "confidence_at_k"
    config_class = ConfidenceAtKConfig
    resumable = True

    def __init__(self, config: ConfidenceAtKConfig | None = None, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.calibrator: TemperatureCalibrator | None = None

    def fit(self, model, tokenizer, items: Sequence[MCQAItem]) -> ConfidenceAtK:
        super().fit(model, tokenizer, items)
        if self.config.calibrate:
            self.calibrator = fit_calibrator(confidence_at_k(model, tokenizer, items, self.config))
        return self

    def evaluate(self, model, tokenizer, items: Sequence[MCQAItem], *,
                 results_path: str | os.PathLike | None = None) -> list[ItemResult]:
        from ..eval.results import ResultsFile

        store = ResultsFile(results_path) if results_path is not None else None
        todo = [it for it in items if store is None or it.id not in store]
        fresh = confidence_at_k(model, tokenizer, todo, self.config, calibrator=self.calibrator,
                                progress=self.progress,
                                on_batch=(lambda rs: store.append([r.to_item_result() for r in rs])) if store else None)
        if store is None:
            return [r.to_item_result() for r in fresh]
        return store.ordered([it.id for it in items])

    @classmethod
    def format_summary(cls, method_metrics: Mapping[str, Any]) -> str:
        curves = method_metrics.get("accuracy_vs_k")
        return format_accuracy_table(cls.name, curves) if curves else ""

    def summarize(self, records: Sequence[ItemResult]) -> dict[str, Any]:
        opts = self.metric_options
        return {"accuracy_vs_k": accuracy_vs_k(records, n_bins=opts["n_bins"], binning=opts["binning"]),
                "parse": parse_stats(records),
                "selectors": SELECTOR_DESCRIPTIONS,
                "k_prefixes": "smaller k are prefixes of the same max(k) samples",
                "confidence_from": "raw logits (output_logits) at the answer step, not the temperature/top-p "
                                   "warped scores",
                "unanswered": "questions with no parseable candidate count as wrong at confidence 0"}

    def write_plots(self, records: Sequence[ItemResult], folder: str, title: str) -> dict[str, str]:
        from ..eval.plots import accuracy_vs_k_plot

        curves = accuracy_vs_k(records, n_bins=self.metric_options["n_bins"], binning=self.metric_options["binning"])
        return {"accuracy_vs_k": accuracy_vs_k_plot(curves, os.path.join(folder, "accuracy_vs_k.png"), title=title)}

    def state_json(self) -> dict[str, Any]:
        return {"calibrator": asdict(self.calibrator) if self.calibrator is not None else None}

    def load_state(self, tensors, state) -> None:
        super().load_state(tensors, {})
        cal = state.get("calibrator")
        self.calibrator = TemperatureCalibrator(**cal) if cal else None


SELECTOR_DESCRIPTIONS = {
    "greedy": "one greedy generate (do_sample=False); confidence at its answer step",
    "majority": "most frequent parsed answer among the first k samples; confidence = votes / k; ties: earliest "
                "first vote",
    "best_logprob": "highest sequence log-probability; confidence = exp(log-prob); ties: earliest",
    "confidence": "highest answer-token confidence; ties: earliest sample"}


def format_accuracy_table(name: str, curves: dict) -> str:
    """Markdown table: one row per selector, accuracy (ECE) per k."""
    ks = sorted({k for d in curves.values() for k in d}, key=int)
    lines = [f"| {name} | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for s, d in curves.items():
        lines.append(f"| {s} | " + " | ".join(
            f"{d[k]['accuracy']:.3f} (ECE {d[k]['ece']:.3f})" if k in d else "-" for k in ks) + " |")
    return "\n".join(lines)
