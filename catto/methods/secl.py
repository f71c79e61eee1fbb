"""SECL (arXiv 2604.09624): label-free test-time self-calibration of verbalised confidence.

A stream of questions is answered one at a time. The frozen model's P(True) ("Is the proposed answer correct?") is
a better-calibrated signal than the confidence it states, so the model is trained at test time, with LoRA, to state
something closer to it, and only while the input distribution is shifting. No gold label is ever read: the items
are stripped of `gold` (and of `metadata`, which can hold the original option order) before the stream starts, and
the labels are re-attached to the returned `ItemResult`s only, for the metrics.

Per question (``A`` = adapters on, the model being calibrated; ``B`` = adapters off, the frozen base):

1. **Gate** (B): next-token entropy (full vocabulary, nats) at the end of the answer prompt, fed to `ShiftGate`
   (EMA ``ema_alpha``, two-sided Page-Hinkley ``ph_epsilon`` / ``ph_threshold``, ``warmup`` observations before it
   may fire, then a burst of ``burst`` questions that may update, the firing one included). The same forward gives
   the base model's letter probabilities (accuracy "before").
2. **Answer** (A): the argmax of the letter probabilities at "Answer:" after a chat prompt that asks for the letter
   and "Confidence: binN" (bins 0-9). Letter scoring, not free generation, because a 135M model rarely produces a
   parseable answer; the answer is fixed before this question's update.
3. **Verbalised confidence** (A): the answer letter and ``confidence_prefix`` ("\\nConfidence: bin") are
   teacher-forced; with q = softmax over the ten digit tokens' logits at the next position, the soft confidence is
   ``c = sum_k q_k (k + 0.5) / 10`` and the verbalised bin ``argmax_k q_k``. Whatever the model would have generated
   there, c is defined; the share of the full next-token mass on the digits (``digit_mass``) says how well the
   model follows the format and is reported.
4. **Target** (B; only when the gate is open, or for every question with ``target_for_all``): ``P(True)`` for the
   model's answer and each alternative option (one prompt per option), normalised across the candidates in log
   space with the per-model temperature ``tau``: ``c* = softmax_k(log P_k(True) / tau)[answer]``. Target bin =
   ``min(floor(10 c*), 9)``.
5. **Update** (A, gate open and ``|verbalised bin - target bin| > skip_bin_distance``): ``c_hat = c + step_fraction
   * clip(c* - c, -max_step, max_step)``, fixed from the pre-update c; ``train_steps`` AdamW steps (``learning_rate``,
   ``weight_decay``, gradients clipped to ``max_grad_norm``) on ``(c - c_hat)^2`` with c recomputed each step. LoRA
   rank ``lora_r``, alpha ``lora_alpha`` on ``target_modules`` of the last ``lora_layers`` layers; the adapter and the
   optimizer state accumulate over the whole stream and are never reset.
6. **Report**: prediction = the answer of step 2; confidence = c after this question's update (``predict_after_update``)
   or before it.

The model object: `evaluate` wraps the model with peft (`get_peft_model`) for the stream and removes the adapter at
the end (`unload()`, also after an error), restoring every parameter's ``requires_grad``: the model you passed comes
back with exactly its weights. The trained adapter is kept in the evaluator (`state_tensors`, `save`), in
``checkpoint_dir/adapter`` in peft's format (``PeftModel.from_pretrained(model, dir)`` gives the calibrated model), and
a later `evaluate` call continues from it.

Checkpointing (``checkpoint_dir``): every ``checkpoint_every`` questions and at the end, adapter weights and AdamW
state (``exp_avg``, ``exp_avg_sq``, ``step``) go to safetensors, the gate, counters and stream position to JSON, the
results so far to JSONL, all in a new folder that is renamed into place before ``latest.json`` points at it. Calling
`evaluate` again with the same items resumes after the last checkpointed question; the finished stream equals an
uninterrupted one (tested).

Cost is counted in forward-pass equivalents (one prompt through the model = 1, a forward + backward = 3), split into
what SECL needs and what is computed only to report baselines (the base model's verbalised confidence, P(True) on
questions the gate did not open).

Example:
    >>> cfg = SECLConfig(warmup=5, burst=10)
    >>> cfg.lora_r, cfg.lora_alpha, cfg.train_steps, cfg.learning_rate, cfg.burst
    (8, 16, 3, 5e-05, 10)
    >>> round(clipped_target(torch.tensor(0.9), torch.tensor(0.3)).item(), 3)  # 0.9 + 0.5 * (-0.15)
    0.825
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.items import MCQAItem
from ..data.prompts import apply_chat_template
from ..eval.metrics import calibration_summary
from ..eval.results import ItemResult
from ..eval.scoring import (
    left_padded_batch,
    letter_token_ids,
    pad_token_id,
    tokenizer_name,
)
from ..io import atomic_directory, write_json_atomic
from .base import Evaluator, EvaluatorConfig, register_method
from .page_hinkley import GateDecision, PageHinkley, ShiftGate

N_BINS = 10  # the verbalised format: one digit 0-9
DIGITS = tuple(str(k) for k in range(N_BINS))
PROMPT_STYLES = ("auto", "chat", "plain")
GATES = ("page_hinkley", "always", "never")
PTRUE_NORMALIZATIONS = ("binary", "full_vocab")
LATEST = "latest.json"


# -- pure math -------------------------------------------------------------------------------------------------------
def soft_confidence(digit_logits: torch.Tensor) -> torch.Tensor:
    """``sum_k softmax(digit_logits)_k (k + 0.5) / 10`` over the last axis (10 digit logits)."""
    centres = (torch.arange(N_BINS, dtype=digit_logits.dtype, device=digit_logits.device) + 0.5) / N_BINS
    return (digit_logits.softmax(-1) * centres).sum(-1)


def confidence_bin(confidence: float) -> int:
    """The bin 0-9 a confidence in [0, 1] falls in (1.0 in bin 9)."""
    return min(int(math.floor(confidence * N_BINS)), N_BINS - 1)


def normalized_ptrue(p_true: torch.Tensor, tau: float) -> torch.Tensor:
    """P(True) of each candidate answer, normalised across the candidates in log space: softmax(log p / tau)."""
    return (p_true.clamp_min(1e-30).log() / tau).softmax(-1)


def clipped_target(c: torch.Tensor, c_star: torch.Tensor, step_fraction: float = 0.5,
                   max_step: float = 0.15) -> torch.Tensor:
    """SECL's training target ``c + step_fraction * clip(c* - c, -max_step, max_step)``."""
    return c + step_fraction * (c_star - c).clamp(-max_step, max_step)


def next_token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) over the last axis."""
    log_p = logits.float().log_softmax(-1)
    return -(log_p.exp() * log_p).sum(-1)


# -- configuration ---------------------------------------------------------------------------------------------------
def _f(default, help_text: str, **extra):
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help_text, **extra})
    return dataclasses.field(default=default, metadata={"help": help_text, **extra})


DEFAULT_ANSWER_INSTRUCTION = (
    "Answer with the letter of the correct option. Then state how confident you are that your answer is correct "
    "as 'Confidence: binN', where N is a digit from 0 (0-10% sure) to 9 (90-100% sure).")
DEFAULT_PTRUE_INSTRUCTION = "Is the proposed answer correct? Answer True or False."


@dataclasses.dataclass
class SECLConfig(EvaluatorConfig):
    """SECL's settings; defaults are the authors' (see the module docstring for where each one acts)."""

    # prompts
    prompt_style: str = _f("auto", "Prompt wrapping: 'chat' (the tokenizer's chat template), 'plain', or 'auto' "
                                   "(chat when the tokenizer has a template).", choices=list(PROMPT_STYLES))
    answer_instruction: str = _f(DEFAULT_ANSWER_INSTRUCTION, "Instruction after the question and options asking for "
                                                             "the answer letter and 'Confidence: binN'.")
    confidence_prefix: str = _f("\nConfidence: bin", "Text teacher-forced after the answer letter; each digit 0-9 "
                                                     "must be one token right after it.")
    ptrue_instruction: str = _f(DEFAULT_PTRUE_INSTRUCTION, "Question asked after 'Proposed answer: X. text' for "
                                                           "P(True); the reply is read at ' True' / ' False'.")
    # target
    ptrue_temperature: float = _f(1.0, "Per-model temperature tau normalising P(True) across the candidate answers "
                                       "in log space (softmax(log P(True) / tau)); set it per model, it is not "
                                       "fitted (that would need labels).")
    ptrue_normalization: str = _f("binary", "P(True) as P(True) / (P(True) + P(False)) ('binary') or the "
                                            "full-vocabulary probability of ' True' ('full_vocab').",
                                  choices=list(PTRUE_NORMALIZATIONS))
    skip_bin_distance: int = _f(1, "No update when the verbalised bin and the target bin differ by at most this.")
    # update
    step_fraction: float = _f(0.5, "Target c_hat = c + step_fraction * clip(c* - c, -max_step, max_step).")
    max_step: float = _f(0.15, "Clip of (c* - c) in the target.")
    train_steps: int = _f(3, "Optimizer steps per updated question.")
    learning_rate: float = _f(5e-5, "AdamW learning rate.")
    weight_decay: float = _f(0.01, "AdamW weight decay (torch's default).")
    max_grad_norm: float = _f(1.0, "Gradient-norm clip per step.")
    lora_r: int = _f(8, "LoRA rank.")
    lora_alpha: int = _f(16, "LoRA alpha (scaling alpha / r).")
    lora_layers: int = _f(4, "LoRA on the last N transformer layers (the authors use the last 4-8).")
    target_modules: list[str] = _f(["q_proj", "v_proj"], "Projection names adapted in those layers (q/v for "
                                                         "Llama, Qwen, Gemma, Mistral style models).")
    # gate
    gate: str = _f("page_hinkley", "Which questions may update: 'page_hinkley' (the shift gate), 'always' (every "
                                   "question, an ablation) or 'never' (no training: the untouched model).",
                   choices=list(GATES))
    ema_alpha: float = _f(0.05, "EMA weight of each new entropy in the smoothed gate signal.")
    ph_epsilon: float = _f(0.05, "Page-Hinkley tolerated change per question (epsilon / delta).")
    ph_threshold: float = _f(3.0, "Page-Hinkley alarm threshold lambda.")
    warmup: int = _f(30, "Questions the Page-Hinkley test observes before it may fire (from the stream's start and "
                         "after each alarm); no update during the first ones.")
    burst: int = _f(50, "Questions that may update after an alarm, the alarming one included.")
    # reporting
    predict_after_update: bool = _f(True, "Report the confidence after this question's update (test-time training) "
                                          "instead of before it.")
    target_for_all: bool = _f(False, "Compute the P(True) target on every question (the P(True) baseline's "
                                     "numbers), not only when the gate is open; counted as diagnostic cost.")
    report_base: bool = _f(True, "Also record the frozen base model's verbalised confidence (the 'before' "
                                 "numbers); counted as diagnostic cost.")
    ece_bins: int = _f(10, "Equal-width bins for the ECE in `summarize` (SECL's convention: 10, plus equal-mass "
                           "AdaECE).")
    # checkpointing
    checkpoint_dir: str | None = _f(None, "Folder for resumable stream checkpoints and the final adapter (catto eval "
                                          "sets <out>/<dataset>/state); None: no checkpoints.")
    checkpoint_every: int = _f(10, "Checkpoint every N questions (and at the end).")
    seed: int = _f(0, "Seed of the LoRA initialisation.")

    def __post_init__(self) -> None:
        def choice(name, allowed):
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {list(allowed)}, got {getattr(self, name)!r}.")

        def integer(name, low):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"`{name}` must be an integer >= {low}, got {v!r}.")

        def number(name, low, high=None, low_open=True):
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and (v > low if low_open else v >= low) and (high is None or v <= high)
            if not ok:
                rng = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}{']' if high else ')'}"
                raise ValueError(f"`{name}` must be a number in {rng}, got {v!r}.")

        choice("prompt_style", PROMPT_STYLES)
        choice("ptrue_normalization", PTRUE_NORMALIZATIONS)
        choice("gate", GATES)
        for name in ("train_steps", "lora_r", "lora_layers", "warmup", "burst", "ece_bins", "checkpoint_every"):
            integer(name, 1)
        integer("skip_bin_distance", 0)
        integer("seed", 0)
        integer("lora_alpha", 1)
        for name in ("ptrue_temperature", "learning_rate", "max_grad_norm", "max_step"):
            number(name, 0.0)
        number("step_fraction", 0.0, 1.0)
        number("ema_alpha", 0.0, 1.0)
        number("weight_decay", 0.0, low_open=False)
        number("ph_epsilon", 0.0, low_open=False)
        number("ph_threshold", 0.0)
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        self.target_modules = list(self.target_modules)
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            raise ValueError(f"`target_modules` must be a non-empty list of module names such as ['q_proj', 'v_proj'],"
                             f" got {self.target_modules!r}.")
        if not self.confidence_prefix.strip():
            raise ValueError("`confidence_prefix` is empty; it must end where the digit 0-9 goes, e.g. "
                             "'\\nConfidence: bin'.")

    def new_gate(self) -> ShiftGate:
        return ShiftGate(ema_alpha=self.ema_alpha, burst=self.burst,
                         test=PageHinkley(epsilon=self.ph_epsilon, threshold=self.ph_threshold,
                                          min_samples=self.warmup))


# -- model plumbing --------------------------------------------------------------------------------------------------
_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def lora_target_names(model, target_modules: Sequence[str], last_n_layers: int) -> list[str]:
    """Full names of the `target_modules` projections inside the last `last_n_layers` numbered blocks of `model`."""
    found: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if not any(name == t or name.endswith("." + t) for t in target_modules):
            continue
        match = _LAYER_INDEX.search(name)
        if match:
            found.setdefault(int(match.group(1)), []).append(name)
    if not found:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"SECL found no linear layer named {list(target_modules)} inside numbered transformer "
                         f"blocks of {type(model).__name__}; set `target_modules` to its attention projections "
                         f"(its linear layers are called {linear}).")
    layers = sorted(found)[-last_n_layers:]
    return [name for layer in layers for name in found[layer]]


def _next_token_ids(tokenizer, prompt: str, pieces: Sequence[str], what: str, fix: str) -> list[int]:
    """Token id of each piece as the single next token after `prompt` (read off the tokenization of prompt+piece)."""
    base = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = []
    for piece in pieces:
        full = tokenizer(prompt + piece, add_special_tokens=False)["input_ids"]
        if len(full) != len(base) + 1 or full[: len(base)] != base:
            raise ValueError(f"SECL needs {what}, but {piece!r} after {prompt[-20:]!r} is not one token for tokenizer "
                             f"{tokenizer_name(tokenizer)!r} (it tokenizes as "
                             f"{tokenizer.convert_ids_to_tokens(full[max(len(base) - 1, 0):])}). {fix}")
        ids.append(full[-1])
    if len(set(ids)) != len(ids):
        raise ValueError(f"SECL needs {what}, but {list(pieces)} share token ids {ids} in tokenizer "
                         f"{tokenizer_name(tokenizer)!r} (unknown tokens?). {fix}")
    return ids


def _question_block(item: MCQAItem) -> str:
    context = f"{item.context}\n\n" if item.context else ""
    options = "\n".join(f"{letter}. {text}" for letter, text in zip(item.letters, item.choices))
    return f"{context}Question: {item.question}\n{options}"


class _Prompter:
    """Builds and tokenizes SECL's three prompts, and finds the letter / digit / True-False token ids."""

    def __init__(self, tokenizer, config: SECLConfig):
        self.tokenizer, self.config = tokenizer, config
        has_template = getattr(tokenizer, "chat_template", None) is not None
        if config.prompt_style == "chat" and not has_template:
            raise ValueError(f"`prompt_style='chat'` but tokenizer {tokenizer_name(tokenizer)!r} has no chat "
                             "template; use prompt_style='plain' (or 'auto').")
        self.chat = config.prompt_style == "chat" or (config.prompt_style == "auto" and has_template)
        self._cache: dict[tuple[str, str], list[int]] = {}

    def _wrap(self, user_text: str) -> str:
        if self.chat:
            return apply_chat_template(self.tokenizer, user_text, answer_prefix="Answer:")
        return f"{user_text}\nAnswer:"

    def answer_prompt(self, item: MCQAItem) -> str:
        return self._wrap(f"{_question_block(item)}\n\n{self.config.answer_instruction}")

    def confidence_prompt(self, answer_prompt: str, letter: str) -> str:
        return f"{answer_prompt} {letter}{self.config.confidence_prefix}"

    def ptrue_prompt(self, item: MCQAItem, k: int) -> str:
        return self._wrap(f"{_question_block(item)}\nProposed answer: {item.letters[k]}. {item.choices[k]}\n"
                          f"{self.config.ptrue_instruction}")

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"]

    def letter_ids(self, prompt: str, letters: Sequence[str]) -> list[int]:
        key = ("letters" + "".join(letters), prompt[-30:])
        if key not in self._cache:
            self._cache[key] = letter_token_ids(self.tokenizer, prompt, letters)
        return self._cache[key]

    def digit_ids(self, prompt: str) -> list[int]:
        key = ("digits", prompt[-30:])
        if key not in self._cache:
            self._cache[key] = _next_token_ids(
                self.tokenizer, prompt, DIGITS, "single-token digits 0-9 for 'Confidence: binN'",
                "Use a tokenizer that splits digits, or change `confidence_prefix` so that each digit is one token "
                "after it (e.g. end it with a space).")
        return self._cache[key]

    def true_false_ids(self, prompt: str) -> list[int]:
        key = ("truefalse", prompt[-30:])
        if key not in self._cache:
            sep = "" if prompt[-1:].isspace() else " "
            self._cache[key] = _next_token_ids(
                self.tokenizer, prompt, [sep + "True", sep + "False"], "' True' and ' False' as single tokens",
                "Use a tokenizer with single-token True/False words.")
        return self._cache[key]


def _last_logits(model, sequences: list[list[int]], pad: int) -> torch.Tensor:
    """float32 next-token logits after each (left-padded) sequence, (batch, vocab); grads flow when enabled."""
    device = next(model.parameters()).device
    ids, mask, pos = left_padded_batch(sequences, pad, device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1, use_cache=False)
    logits = out.logits[:, -1].float()
    if not torch.isfinite(logits).all():
        raise FloatingPointError("SECL: the model produced NaN/inf logits.")
    return logits


# -- the evaluator ---------------------------------------------------------------------------------------------------
@register_method
class SECLEvaluator(Evaluator):
    """SECL as a streaming, label-free evaluator (see the module docstring).

    Example:
        >>> from catto.data.synthetic import make_model
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> from transformers import PreTrainedTokenizerFast
        >>> words = ["<pad>", "<unk>", "A", "B", "True", "False", "bin", ":"] + list("0123456789")
        >>> raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
        >>> raw.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
        ...     pre_tokenizers.Punctuation(), pre_tokenizers.Digits(individual_digits=True)])
        >>> tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", unk_token="<unk>")
        >>> model = make_model(vocab_size=len(words))
        >>> items = [MCQAItem(f"q{i}", "A or B ?", ("A", "B"), gold=0) for i in range(4)]
        >>> secl = SECLEvaluator(gate="always", skip_bin_distance=0, target_modules=["q_proj", "v_proj"])
        >>> results = secl.evaluate(model, tok, items)
        >>> len(results), all(0.0 < r.confidence < 1.0 for r in results), secl.summarize(results)["share_trained"]
        (4, True, 1.0)
    """

    name = "secl"
    config_class = SECLConfig
    needs_labels = False

    def __init__(self, config: SECLConfig | None = None, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.fitted = True  # label-free: nothing to fit before the stream
        self.adapter: dict[str, torch.Tensor] = {}  # accumulated LoRA weights (peft state-dict names)
        self.optimizer: dict[str, torch.Tensor] = {}  # AdamW state, "<param name>/<exp_avg|exp_avg_sq|step>"
        self.gate = self.config.new_gate()
        self.counters = {"questions": 0, "updates": 0, "method_forwards": 0.0, "diagnostic_forwards": 0.0}
        self.target_names: list[str] = []

    # -- saved state ---------------------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {**{f"adapter/{k}": v for k, v in self.adapter.items()},
                **{f"optimizer/{k}": v for k, v in self.optimizer.items()}}

    def state_json(self) -> dict[str, Any]:
        return {"gate": self.gate.state_dict(), "counters": dict(self.counters), "target_names": self.target_names}

    def load_state(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.adapter = {k.removeprefix("adapter/"): v for k, v in tensors.items() if k.startswith("adapter/")}
        self.optimizer = {k.removeprefix("optimizer/"): v for k, v in tensors.items() if k.startswith("optimizer/")}
        if state.get("gate"):
            self.gate = ShiftGate.from_state_dict(state["gate"])
        self.counters = {**self.counters, **state.get("counters", {})}
        self.target_names = list(state.get("target_names", []))

    # -- the stream ----------------------------------------------------------------------------------------------
    def bind_output(self, folder: str) -> None:
        """Checkpoint the stream under `folder/state` unless the config names a `checkpoint_dir` of its own."""
        if self.config.checkpoint_dir is None or getattr(self, "_checkpoint_from_output", False):
            self.config = dataclasses.replace(self.config, checkpoint_dir=os.path.join(folder, "state"))
            self._checkpoint_from_output = True

    def evaluate(self, model, tokenizer, items: Sequence[MCQAItem]) -> list[ItemResult]:
        """Run the stream over `items` in order; one `ItemResult` per item (gold re-attached only at the end)."""
        from peft import PeftModel

        if isinstance(model, PeftModel):
            raise TypeError("SECL wraps the model with its own LoRA adapter; pass the base model (merge your adapter "
                            "first with `model.merge_and_unload()`).")
        ids = [it.id for it in items]
        if len(set(ids)) != len(ids):
            raise ValueError("SECL: item ids must be unique (they key the checkpoint); found duplicates.")
        # Structural label-freedom: the stream only ever sees these copies.
        stream = [dataclasses.replace(it, gold=None, metadata={}) for it in items]
        prompter = _Prompter(tokenizer, self.config)
        results: list[ItemResult] = self._resume(ids)
        if len(results) < len(stream):
            peft_model, restore = self._wrap(model)
            try:
                self._run(peft_model, prompter, pad_token_id(tokenizer), stream, results, ids)
            finally:
                self._unwrap(peft_model, restore)
        gold = {it.id: it.gold for it in items}
        return [dataclasses.replace(r, gold=gold[r.id], correct=None if gold[r.id] is None or r.prediction is None
                                    else r.prediction == gold[r.id]) for r in results]

    def _run(self, peft_model, prompter, pad, stream, results, ids) -> None:
        params = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
        optimizer = torch.optim.AdamW(list(params.values()), lr=self.config.learning_rate,
                                      weight_decay=self.config.weight_decay)
        self._load_optimizer(optimizer, params)
        every = self.config.checkpoint_every
        bar = tqdm(total=len(stream), initial=len(results), desc="secl stream", unit="q", disable=not self.progress)
        for position in range(len(results), len(stream)):
            results.append(self._process(peft_model, prompter, pad, stream[position], optimizer, params))
            bar.update(1)
            if self.config.checkpoint_dir and ((position + 1) % every == 0 or position + 1 == len(stream)):
                self._snapshot(optimizer, params, peft_model)
                self._write_checkpoint(ids[: position + 1], results)
        bar.close()
        self._snapshot(optimizer, params, peft_model)
        if self.config.checkpoint_dir:
            peft_model.save_pretrained(os.path.join(self.config.checkpoint_dir, "adapter"))

    @torch.no_grad()
    def _frozen(self, peft_model, sequences, pad) -> torch.Tensor:
        with peft_model.disable_adapter():
            return _last_logits(peft_model, sequences, pad)

    def _confidence(self, peft_model, sequence, digit_ids, pad) -> tuple[torch.Tensor, torch.Tensor]:
        """(soft confidence, full-vocab log-probs at the digit position); differentiable when grads are on."""
        logits = _last_logits(peft_model, [sequence], pad)[0]
        return soft_confidence(logits[digit_ids]), logits.log_softmax(-1)

    def _process(self, peft_model, prompter: _Prompter, pad: int, item: MCQAItem, optimizer, params) -> ItemResult:
        cfg, cost = self.config, {"method": 0.0, "diagnostic": 0.0}
        adapter_is_zero = self.counters["updates"] == 0 and not self.adapter
        answer_prompt = prompter.answer_prompt(item)
        answer_seq = prompter.encode(answer_prompt)
        letter_ids = torch.tensor(prompter.letter_ids(answer_prompt, item.letters))
        # 1. gate signal + base answer (adapters off)
        base_logits = self._frozen(peft_model, [answer_seq], pad)[0]
        cost["method"] += 1
        entropy = float(next_token_entropy(base_logits))
        decision = self._gate(entropy)
        base_probs = base_logits[letter_ids].softmax(-1)
        # 2. answer (adapters on; identical to the base while the adapter is still zero)
        if adapter_is_zero:
            probs = base_probs
        else:
            with torch.no_grad():
                probs = _last_logits(peft_model, [answer_seq], pad)[0][letter_ids].softmax(-1)
            cost["method"] += 1
        answer = int(probs.argmax())
        # 3. verbalised confidence (adapters on)
        conf_prompt = prompter.confidence_prompt(answer_prompt, item.letters[answer])
        conf_seq, digit_ids = prompter.encode(conf_prompt), prompter.digit_ids(conf_prompt)
        with torch.no_grad():
            c0, log_p = self._confidence(peft_model, conf_seq, digit_ids, pad)
        cost["method"] += 1
        digit_p = log_p[digit_ids].exp()
        v_bin = int(digit_p.argmax())
        extra: dict[str, Any] = {
            "verbalized_bin": v_bin, "confidence_before_update": float(c0),
            "digit_probs": (digit_p / digit_p.sum()).tolist(), "digit_mass": float(digit_p.sum()),
            "entropy": entropy, "gate": decision.to_dict(),
            "base_prediction": int(base_probs.argmax()), "base_option_probs": base_probs.tolist(),
        }
        # 4. label-free target (adapters off)
        c_star = None
        if decision.may_update or cfg.target_for_all:
            p_true = self._ptrue(peft_model, prompter, item, pad)
            cost["method" if decision.may_update else "diagnostic"] += len(item.choices)
            c_star = float(normalized_ptrue(p_true, cfg.ptrue_temperature)[answer])
            extra.update(ptrue=p_true.tolist(), ptrue_target=c_star, target_bin=confidence_bin(c_star))
        # 5. update
        updated, reason = False, None
        if not decision.may_update:
            reason = "gate_closed"
        elif abs(v_bin - confidence_bin(c_star)) <= cfg.skip_bin_distance:
            reason = "bins_agree"
        else:
            c_hat = clipped_target(c0, torch.tensor(c_star, dtype=c0.dtype))
            extra["clipped_target"] = float(c_hat)
            for _ in range(cfg.train_steps):
                optimizer.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    c, _ = self._confidence(peft_model, conf_seq, digit_ids, pad)
                    loss = (c - c_hat) ** 2
                    loss.backward()
                torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.max_grad_norm)
                optimizer.step()
                cost["method"] += 3
            optimizer.zero_grad(set_to_none=True)
            updated = True
            self.counters["updates"] += 1
        extra.update(updated=updated, skip_reason=reason)
        confidence = float(c0)
        if updated and cfg.predict_after_update:
            with torch.no_grad():
                confidence = float(self._confidence(peft_model, conf_seq, digit_ids, pad)[0])
            cost["method"] += 1
        # base model's verbalised confidence in its own answer (the "before" numbers)
        if cfg.report_base:
            if adapter_is_zero:
                extra["base_confidence"] = float(c0)
            else:
                base_answer = extra["base_prediction"]
                base_conf_prompt = prompter.confidence_prompt(answer_prompt, item.letters[base_answer])
                logits = self._frozen(peft_model, [prompter.encode(base_conf_prompt)], pad)[0]
                extra["base_confidence"] = float(soft_confidence(logits[prompter.digit_ids(base_conf_prompt)]))
                cost["diagnostic"] += 1
        extra["cost"] = cost
        extra["stream_position"] = self.counters["questions"]
        self.counters["questions"] += 1
        self.counters["method_forwards"] += cost["method"]
        self.counters["diagnostic_forwards"] += cost["diagnostic"]
        return ItemResult(id=item.id, option_probs=probs.tolist(), prediction=answer, confidence=confidence,
                          gold=None, correct=None, source=item.source, subject=item.subject, extra=extra)

    def _gate(self, entropy: float) -> GateDecision:
        if self.config.gate == "page_hinkley":
            return self.gate.observe(entropy)
        open_ = self.config.gate == "always"
        return GateDecision(may_update=open_, detected=None, warmup=False, smoothed=entropy, burst_left=0,
                            statistics=(0.0, 0.0))

    def _ptrue(self, peft_model, prompter: _Prompter, item: MCQAItem, pad: int) -> torch.Tensor:
        prompts = [prompter.ptrue_prompt(item, k) for k in range(len(item.choices))]
        logits = self._frozen(peft_model, [prompter.encode(p) for p in prompts], pad)
        tf = torch.tensor([prompter.true_false_ids(p) for p in prompts])
        rows = torch.arange(len(prompts))
        if self.config.ptrue_normalization == "binary":
            return logits[rows[:, None], tf].softmax(-1)[:, 0]
        return logits.log_softmax(-1)[rows, tf[:, 0]].exp()

    # -- peft wrapping -------------------------------------------------------------------------------------------
    def _wrap(self, model):
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

        requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        was_training = model.training
        self.target_names = lora_target_names(model, self.config.target_modules, self.config.lora_layers)
        lora = LoraConfig(r=self.config.lora_r, lora_alpha=self.config.lora_alpha, lora_dropout=0.0,
                          target_modules=self.target_names, bias="none")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            peft_model = get_peft_model(model, lora)
        if self.adapter:
            result = set_peft_model_state_dict(peft_model, self.adapter)
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise ValueError(f"SECL: the saved adapter does not fit this model (unexpected {unexpected[:3]}); "
                                 "was it trained on another architecture or with other `target_modules`?")
        peft_model.eval()
        return peft_model, (requires_grad, was_training)

    @staticmethod
    def _unwrap(peft_model, restore) -> None:
        requires_grad, was_training = restore
        base = peft_model.unload()
        for n, p in base.named_parameters():
            p.requires_grad_(requires_grad.get(n, p.requires_grad))
        base.train(was_training)

    def _snapshot(self, optimizer, params, peft_model) -> None:
        from peft import get_peft_model_state_dict

        self.adapter = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
        state: dict[str, torch.Tensor] = {}
        for name, p in params.items():
            for key, value in optimizer.state.get(p, {}).items():
                state[f"{name}/{key}"] = torch.as_tensor(value).detach().cpu().clone()
        self.optimizer = state

    def _load_optimizer(self, optimizer, params) -> None:
        if not self.optimizer:
            return
        for name, p in params.items():
            keys = {k.rsplit("/", 1)[1]: v for k, v in self.optimizer.items() if k.rsplit("/", 1)[0] == name}
            if keys:
                optimizer.state[p] = {k: v.to(p.device) if k != "step" else v.clone() for k, v in keys.items()}

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def _write_checkpoint(self, done_ids: list[str], results: list[ItemResult]) -> None:
        from safetensors.torch import save_file

        root = self.config.checkpoint_dir
        name = f"step-{len(done_ids):08d}"
        with atomic_directory(os.path.join(root, name), replace=True) as tmp:
            save_file({k: v.contiguous() for k, v in self.state_tensors().items()},
                      os.path.join(tmp, "state.safetensors"))
            with open(os.path.join(tmp, "results.jsonl"), "w") as f:
                f.writelines(r.to_json() + "\n" for r in results)
            with open(os.path.join(tmp, "stream.json"), "w") as f:
                json.dump({"config": self.config.to_dict(), "done_ids": done_ids, **self.state_json()}, f)
        write_json_atomic(os.path.join(root, LATEST), {"checkpoint": name, "questions_done": len(done_ids)})
        for old in os.listdir(root):
            if old.startswith("step-") and old != name:
                shutil.rmtree(os.path.join(root, old), ignore_errors=True)

    def _resume(self, ids: list[str]) -> list[ItemResult]:
        """Results already produced for a prefix of `ids` (restoring the state saved with them), else []."""
        from safetensors.torch import load_file

        root = self.config.checkpoint_dir
        if not root or not os.path.exists(os.path.join(root, LATEST)):
            return []
        with open(os.path.join(root, LATEST)) as f:
            folder = os.path.join(root, json.load(f)["checkpoint"])
        with open(os.path.join(folder, "stream.json")) as f:
            saved = json.load(f)
        done = saved["done_ids"]
        if done != ids[: len(done)]:
            raise ValueError(f"checkpoint_dir {root!r} holds a SECL stream over other items (its first ids "
                             f"{done[:3]}, yours {ids[:3]}); point `checkpoint_dir` at an empty folder or delete it.")
        relevant = {k: v for k, v in saved["config"].items() if k not in ("checkpoint_dir", "checkpoint_every")}
        mine = {k: v for k, v in self.config.to_dict().items() if k in relevant}
        if relevant != mine:
            changed = sorted(k for k in relevant if relevant[k] != mine.get(k))
            raise ValueError(f"checkpoint_dir {root!r} was written with other SECL settings ({changed}); resume with "
                             "the same config or use an empty folder.")
        self.load_state(load_file(os.path.join(folder, "state.safetensors")), saved)
        with open(os.path.join(folder, "results.jsonl")) as f:
            return [ItemResult.from_dict(json.loads(line)) for line in f if line.strip()]

    # -- stream-level numbers ------------------------------------------------------------------------------------
    def summarize(self, results: Sequence[ItemResult]) -> dict[str, Any]:
        """Share of the stream trained on, cost per question, format-following, and (labelled results) ECE,
        AdaECE, Brier, AUROC, accuracy of the base model's verbalised confidence, of the normalised P(True) (where
        computed) and of SECL."""
        if not results:
            return {"n": 0}
        ex = [r.extra for r in results]
        n = len(results)
        out: dict[str, Any] = {
            "n": n,
            "share_trained": float(np.mean([e["updated"] for e in ex])),
            "n_updates": int(sum(e["updated"] for e in ex)),
            "share_gate_open": float(np.mean([e["gate"]["may_update"] for e in ex])),
            "n_detections": int(sum(e["gate"]["detected"] is not None for e in ex)),
            "skip_reasons": {k: sum(e["skip_reason"] == k for e in ex) for k in ("gate_closed", "bins_agree")},
            "cost_per_question": {
                "method": float(np.mean([e["cost"]["method"] for e in ex])),
                "diagnostic": float(np.mean([e["cost"]["diagnostic"] for e in ex])),
                "unit": "forward-pass equivalents (one prompt forward = 1, forward + backward = 3)",
            },
            "format": {
                "mean_digit_mass": float(np.mean([e["digit_mass"] for e in ex])),
                "mean_max_digit_prob": float(np.mean([max(e["digit_probs"]) for e in ex])),
                "verbalized_bin_counts": np.bincount([e["verbalized_bin"] for e in ex], minlength=N_BINS).tolist(),
            },
        }
        labelled = [r for r in results if r.gold is not None]
        if not labelled:
            return out
        golds = np.array([r.gold for r in labelled])

        def metrics(conf, correct) -> dict[str, float]:
            s = calibration_summary(np.asarray(conf, dtype=float), np.asarray(correct, dtype=bool),
                                    n_bins=self.config.ece_bins)
            return {k: s[name]["value"] for k, name in (("accuracy", "accuracy"), ("ece", "ece"),
                                                         ("ada_ece", "ece_equal_mass"), ("brier", "brier_top_label"),
                                                         ("auroc", "auroc"))} | {"n": s["n"]}

        secl_correct = [bool(r.correct) for r in labelled]
        out["secl"] = metrics([r.confidence for r in labelled], secl_correct)
        out["secl_before_update"] = metrics([r.extra["confidence_before_update"] for r in labelled], secl_correct)
        if all("base_confidence" in r.extra for r in labelled):
            base_correct = np.array([r.extra["base_prediction"] for r in labelled]) == golds
            out["verbalized_base"] = metrics([r.extra["base_confidence"] for r in labelled], base_correct)
        with_target = [r for r in labelled if r.extra.get("ptrue_target") is not None]
        if with_target:
            out["ptrue"] = metrics([r.extra["ptrue_target"] for r in with_target], [bool(r.correct) for r in with_target])
            out["ptrue"]["covers"] = "all questions" if len(with_target) == len(labelled) else "gate-open questions"
        out["metric_scheme"] = {"ece": f"{self.config.ece_bins} equal-width bins", "ada_ece": "equal-mass bins",
                                "brier": "top-label"}
        return out
