"""Held-out token calibration: the quantity the CATTO term optimises, measured on responses the model never trained on.

For every response token t of a held-out preference pair (chosen and rejected reported apart), with next-token
distribution p_t and the token y_t the response continues with:

- confidence = max_v p_t(v) (the term's default `catto_confidence="max"`);
- correct = (argmax_v p_t(v) == y_t);

and over all tokens: accuracy, mean confidence, ECE (equal-width and equal-mass), top-label Brier, with intervals
from a bootstrap that resamples *sequences* (the tokens of one response are not independent), the ECE noise floor
and a debiased ECE (`catto.eval.metrics.ece_estimate`).

The tokens are exactly those `trl.DPOTrainer` trains on: the pair is tokenized with TRL 1.16's rule (the EOS token
appended to string completions, the chat template applied to conversational ones, the completion starting where
the tokenized prompt and prompt + completion diverge), and truncated to `max_length` keeping the start. The
statistics come from the trainer's own tiled LM-head pass (`catto.core.fused_head.chunked_calibration_stats`) over the
response positions only, so no `(batch, seq, vocab)` logits are built and the numbers equal the trainer's
`catto/confidence` and `catto/token_accuracy` for the same weights and tokens.

Example:
    >>> from catto.data.synthetic import make_model, make_tokenizer, preference_dataset
    >>> pairs = preference_dataset(4, answer_len=2)
    >>> results = token_calibration(make_model(), make_tokenizer(), pairs, progress=False)
    >>> [len(r.chosen.confidence) for r in results]   # two answer words + the EOS TRL appends
    [3, 3, 3, 3]
    >>> summary = summarize_token_results(results, n_resamples=50, n_simulations=10)
    >>> summary["chosen"]["n_tokens"], 0.0 <= summary["chosen"]["ece"]["value"] <= 1.0
    (12, True)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

ROLES = ("chosen", "rejected")


@dataclass
class TokenSequence:
    """Per-token statistics of one response.

    Args:
        token_ids: the response tokens y_t (the EOS TRL appends included).
        confidence: max next-token probability before each token.
        correct: whether the most likely next token was y_t.
        label_prob: p_t(y_t).
    """

    token_ids: list[int]
    confidence: list[float]
    correct: list[bool]
    label_prob: list[float]

    def __post_init__(self) -> None:
        n = len(self.token_ids)
        if not (len(self.confidence) == len(self.correct) == len(self.label_prob) == n):
            raise ValueError("TokenSequence fields must have one entry per response token.")


@dataclass
class TokenPairResult:
    """Token statistics of one held-out preference pair (the per-sequence record of `catto eval --method token`)."""

    id: str
    chosen: TokenSequence
    rejected: TokenSequence
    n_prompt_tokens: int = 0
    truncated: bool = False
    source: str | None = None
    subject: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> TokenPairResult:
        row = dict(row)
        for role in ROLES:
            row[role] = TokenSequence(**row[role])
        return cls(**row)

    def sequence(self, role: str) -> TokenSequence:
        return getattr(self, role)


@dataclass(frozen=True)
class TokenEvalConfig:
    """How held-out pairs are tokenized and scored; written next to the results."""

    max_length: int | None = 1024
    include_eos: bool = True
    batch_size: int = 8
    token_chunk_size: int = 1024
    # One row per pair, prompt + chosen + rejected (the prompt computed once; rejected never sees chosen): the same
    # values up to float rounding. Falls back to two rows where the attention backend cannot take the mask.
    prefix_sharing: bool = True

    def __post_init__(self) -> None:
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 2):
            raise ValueError(f"`max_length` must be an integer >= 2 or None, got {self.max_length!r}.")
        for name in ("batch_size", "token_chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self),
                "confidence": "max next-token probability over the full vocabulary",
                "correct": "top-1 next token == the response token",
                "tokenization": "TRL 1.16 DPOTrainer (EOS appended to string completions; chat template for "
                                "conversational pairs; truncation keep_start at max_length)"}


# ----------------------------------------------------------------------------------------------------------------
# Tokenization, as trl.DPOTrainer._prepare_dataset does it


def _tokenize(tokenizer, value, **chat_kwargs) -> list[int]:
    if isinstance(value, list):  # conversational: message dicts
        ids = tokenizer.apply_chat_template(value, tokenize=True, return_dict=False, **chat_kwargs)
        if isinstance(ids, Mapping):  # tokenizers that return a BatchEncoding whatever return_dict says
            ids = ids["input_ids"]
        return list(ids)
    return list(tokenizer(value)["input_ids"])


def tokenize_pair(tokenizer, row: Mapping[str, Any]) -> tuple[list[int], list[int], list[int]]:
    """`(prompt_ids, chosen_ids, rejected_ids)` of a preference row, by TRL 1.16's `DPOTrainer` rule.

    Rows without a `prompt` get TRL's implicit-prompt extraction (the longest shared prefix of chosen and
    rejected).
    """
    from trl.data_utils import common_prefix_length, extract_prompt, is_conversational

    row = dict(row)
    if "prompt" not in row:
        row = {**row, **extract_prompt(row)}
    if is_conversational(row):
        prompt_ids = _tokenize(tokenizer, row["prompt"], add_generation_prompt=True)
        chosen_full = _tokenize(tokenizer, row["prompt"] + row["chosen"])
        rejected_full = _tokenize(tokenizer, row["prompt"] + row["rejected"])
    else:
        eos = tokenizer.eos_token
        chosen = row["chosen"] if row["chosen"].endswith(eos) else row["chosen"] + eos
        rejected = row["rejected"] if row["rejected"].endswith(eos) else row["rejected"] + eos
        prompt_ids = _tokenize(tokenizer, row["prompt"])
        chosen_full = _tokenize(tokenizer, row["prompt"] + chosen)
        rejected_full = _tokenize(tokenizer, row["prompt"] + rejected)
    n_prompt = min(common_prefix_length(prompt_ids, chosen_full), common_prefix_length(prompt_ids, rejected_full))
    return prompt_ids[:n_prompt], chosen_full[n_prompt:], rejected_full[n_prompt:]


# ----------------------------------------------------------------------------------------------------------------
# The model side: backbone + the trainer's tiled LM-head statistics


def can_share_prefix(config) -> bool:
    """Whether a model's attention takes prefix sharing's custom mask (sdpa or eager, a text-only model)."""
    from ..core.prefix_sharing import SUPPORTED_ATTENTION

    impl = getattr(config, "_attn_implementation", None) or "eager"
    return impl in SUPPORTED_ATTENTION and config.get_text_config() is config


def backbone_and_head(model) -> tuple[torch.nn.Module, torch.nn.Module, Any]:
    """`(decoder without LM head, LM head, config)` of a causal LM, a PEFT-wrapped one included (adapters active)."""
    from transformers.utils import is_peft_available

    inner = model
    if is_peft_available():
        from peft import PeftModel

        if isinstance(model, PeftModel):
            inner = model.get_base_model()
    backbone = inner.base_model
    if backbone is inner:
        raise ValueError(f"{type(inner).__name__} has no separate decoder (`base_model`); token calibration needs a "
                         "causal LM with an LM head.")
    return backbone, inner.get_output_embeddings(), inner.config


def head_statistics(hidden: torch.Tensor, head, config, targets: torch.Tensor,
                    token_chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(label log-prob, top-1 log-prob, top-1 id)` `(n,)` of the hidden states `(n, H)` that predict `targets`
    `(n,)`, on the head's device, from the tiled LM-head kernel the trainer uses (no `(n, vocab)` logits; the model's
    logit scale and soft-cap applied). A NaN/inf logit is a `FloatingPointError` naming the usual cause."""
    from trl.trainer.utils import maybe_gather_lm_head_ctx

    from ..core.fused_head import chunked_calibration_stats, head_weight_and_bias, logit_transform_from_config

    weight, bias = head_weight_and_bias(head)
    logit_scale, softcap = logit_transform_from_config(config)
    targets = targets.to(weight.device)
    with maybe_gather_lm_head_ctx(weight, bias):
        label_logp, *_, top_logp, top_ids = chunked_calibration_stats(
            hidden.to(weight.device), weight, bias, targets, token_chunk_size=token_chunk_size,
            logit_scale=logit_scale, softcap=softcap)
    if not (torch.isfinite(top_logp[:, 0]).all() and torch.isfinite(label_logp).all()):
        raise FloatingPointError("The model produced NaN/inf logits; check the dtype (fp16 overflows on some "
                                 "models; use bf16 or fp32).")
    return label_logp, top_logp[:, 0], top_ids[:, 0]


def _token_stats(hidden: torch.Tensor, head, config, targets: torch.Tensor,
                 token_chunk_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(confidence, correct, label_prob)` on the CPU of the hidden states `(n, H)` that predict `targets` `(n,)`."""
    label_logp, top_logp, top_ids = head_statistics(hidden, head, config, targets, token_chunk_size)
    return (top_logp.float().exp().cpu(), (top_ids.cpu() == targets.cpu()),
            label_logp.float().exp().cpu())


@torch.no_grad()
def _score_batch(backbone, head, config, sequences: list[tuple[list[int], int]], pad: int, device,
                 token_chunk_size: int) -> list[tuple[list[int], list[float], list[bool], list[float]]]:
    """Per sequence `(tokens, confidence, correct, label_prob)` over the positions from `start` on."""
    width = max(len(ids) for ids, _ in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    scored = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, (seq, start) in enumerate(sequences):  # right padding: positions are the default 0..len-1
        ids[row, : len(seq)] = torch.tensor(seq)
        attention[row, : len(seq)] = 1
        scored[row, start: len(seq)] = True
    ids, attention, scored = ids.to(device), attention.to(device), scored.to(device)
    hidden = backbone(input_ids=ids, attention_mask=attention, use_cache=False).last_hidden_state
    mask = scored[:, 1:]  # hidden state t predicts token t + 1
    conf, correct, label_prob = _token_stats(hidden[:, :-1][mask], head, config, ids[:, 1:][mask], token_chunk_size)
    counts = mask.sum(1).tolist()
    out, offset = [], 0
    for (seq, start), n in zip(sequences, counts):
        part = slice(offset, offset + n)
        out.append((seq[start: start + n], conf[part].tolist(), correct[part].tolist(), label_prob[part].tolist()))
        offset += n
    return out


@torch.no_grad()
def _score_shared(backbone, head, config, pairs: list[tuple[list[int], list[int], list[int]]], pad: int, device,
                  token_chunk_size: int) -> list[tuple[tuple, tuple]]:
    """`_score_batch` for whole pairs `(prompt, chosen, rejected)` with prefix sharing: one row per pair
    (`catto.core.prefix_sharing`); per pair the `(tokens, confidence, correct, label_prob)` of chosen and rejected."""
    from ..core.prefix_sharing import backend_mask, shared_layout

    examples = [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in pairs]
    width = max(len(p) + max(len(c), len(r)) for p, c, r in pairs)
    layout = shared_layout(examples, width, pad_token_id=pad)
    n = layout["catto_shared_input_ids"].size(1)
    # the hidden state that predicts each response token: the previous token's in the shared row
    rows, targets, counts = [], [], []
    for k, (p, c, r) in enumerate(pairs):
        base = k * n
        chosen_at = [base + len(p) - 1 + j for j in range(len(c))]
        rejected_at = [base + len(p) - 1] + [base + len(p) + len(c) + j - 1 for j in range(1, len(r))]
        rows += chosen_at + rejected_at
        targets += c + r
        counts.append((len(c), len(r)))
    ids = layout["catto_shared_input_ids"].to(device)
    positions = layout["catto_shared_position_ids"].to(device)
    dtype = next(backbone.parameters()).dtype
    mask = backend_mask(layout["catto_shared_mask"].to(device), positions, backbone.config,
                        dtype if dtype.is_floating_point else torch.float32)
    hidden = backbone(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).last_hidden_state
    picked = hidden.reshape(-1, hidden.size(-1))[torch.tensor(rows, device=hidden.device)]
    conf, correct, label_prob = _token_stats(picked, head, config, torch.tensor(targets), token_chunk_size)
    out, offset = [], 0
    for (p, c, r), (nc, nr) in zip(pairs, counts):
        roles = []
        for tokens, count in ((c, nc), (r, nr)):
            part = slice(offset, offset + count)
            roles.append((list(tokens), conf[part].tolist(), correct[part].tolist(), label_prob[part].tolist()))
            offset += count
        out.append(tuple(roles))
    return out


def _truncate(prompt: list[int], completion: list[int], max_length: int | None) -> tuple[list[int], bool]:
    seq = prompt + completion
    if max_length is None or len(seq) <= max_length:
        return seq, False
    return seq[:max_length], True


def token_calibration(model, tokenizer, pairs: Iterable[Mapping[str, Any]], *,
                      config: TokenEvalConfig = TokenEvalConfig(), results_path: str | os.PathLike | None = None,
                      progress: bool = True) -> list[TokenPairResult]:
    """Token statistics of every held-out preference pair (`prompt`/`chosen`/`rejected`, strings or messages).

    Pairs are identified by their `id` column when present (MCQA pairs have one), else by their position. With
    `results_path`, each batch is appended to that JSONL and a re-run skips the pairs it holds (resume).
    """
    from .results import ResultsFile

    rows = list(pairs)
    if not rows:
        raise ValueError("token_calibration got no pairs.")
    ids = [str(row["id"]) if row.get("id") is not None else str(i) for i, row in enumerate(rows)]
    if len(set(ids)) != len(ids):
        raise ValueError("Pair ids must be unique to resume and join results; found duplicates (for MCQA pairs, "
                         "build them with rejected='random': one pair per item).")
    store = ResultsFile(results_path, record_type=TokenPairResult) if results_path is not None else None
    todo = [i for i in range(len(rows)) if store is None or ids[i] not in store]
    backbone, head, model_config = backbone_and_head(model)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    # One entry per sequence to score: (pair index, role, token ids, index of the first response token).
    sequences = []
    meta = {}
    for i in todo:
        prompt, chosen, rejected = tokenize_pair(tokenizer, rows[i])
        if not chosen or not rejected:
            raise ValueError(f"Pair {ids[i]!r}: an empty {'chosen' if not chosen else 'rejected'} response after "
                             "tokenization; every pair needs a non-empty chosen and rejected completion.")
        truncated = False
        for role, completion in (("chosen", chosen), ("rejected", rejected)):
            if not config.include_eos and completion and completion[-1] == eos:
                completion = completion[:-1]
            seq, cut = _truncate(prompt, completion, config.max_length)
            truncated |= cut
            if len(prompt) >= len(seq):
                raise ValueError(f"Pair {ids[i]!r}: the prompt alone ({len(prompt)} tokens) fills max_length "
                                 f"{config.max_length}; raise max_length.")
            sequences.append((i, role, seq, len(prompt)))
        meta[i] = (len(prompt), truncated)
    model_was_training = model.training
    model.eval()
    shared = config.prefix_sharing and can_share_prefix(model_config)
    if shared:  # one unit per pair: (pair index, prompt, chosen, rejected), the completions truncated as above
        by_pair: dict[int, dict[str, Any]] = {}
        for i, role, seq, start in sequences:
            by_pair.setdefault(i, {"prompt": seq[:start]})[role] = seq[start:]
        units = [(i, u["prompt"], u["chosen"], u["rejected"]) for i, u in by_pair.items()]
        order = sorted(range(len(units)), key=lambda k: len(units[k][1]) + len(units[k][2]) + len(units[k][3]))
    else:
        units = sequences
        order = sorted(range(len(sequences)), key=lambda k: len(sequences[k][2]))
    partial: dict[int, dict[str, TokenSequence]] = {}
    done: list[TokenPairResult] = []
    bar = tqdm(total=len(todo), desc="token calibration", unit="pair", disable=not progress)
    try:
        for start in range(0, len(order), config.batch_size):
            batch = [units[k] for k in order[start: start + config.batch_size]]
            if shared:
                stats = _score_shared(backbone, head, model_config, [(p, c, r) for _, p, c, r in batch], pad, device,
                                      config.token_chunk_size)
                scored = [((i, role), s) for (i, *_), per_role in zip(batch, stats)
                          for role, s in zip(ROLES, per_role)]
            else:
                stats = _score_batch(backbone, head, model_config, [(seq, s) for _, _, seq, s in batch], pad, device,
                                     config.token_chunk_size)
                scored = [((i, role), s) for (i, role, _, _), s in zip(batch, stats)]
            finished = []
            for (i, role), (toks, conf, corr, lp) in scored:
                partial.setdefault(i, {})[role] = TokenSequence(toks, conf, corr, lp)
                if len(partial[i]) == 2:
                    row = rows[i]
                    finished.append(TokenPairResult(
                        id=ids[i], chosen=partial[i]["chosen"], rejected=partial[i]["rejected"],
                        n_prompt_tokens=meta[i][0], truncated=meta[i][1], source=row.get("source"),
                        subject=row.get("subject"), extra={"eos_token_id": eos} if eos is not None else {}))
                    del partial[i]
            if store is not None:
                store.append(finished)
            done.extend(finished)
            bar.update(len(finished))
    finally:
        bar.close()
        model.train(model_was_training)
    if store is None:
        by_id = {r.id: r for r in done}
        return [by_id[i] for i in ids]
    return store.ordered(ids)


# ----------------------------------------------------------------------------------------------------------------
# Aggregation


# The parts of a response the summaries report apart: the answer's own tokens, and the EOS that TRL appends to every
# string completion (trained on like any response token; with 2-3-token answers it is a third of the tokens).
PARTS = ("answer", "eos")


def eos_token_id_of(results: Sequence[TokenPairResult]) -> int | None:
    """The EOS id the records were scored with (`extra["eos_token_id"]`), or None when any record lacks it (records
    of catto <= 0.1) or they disagree: then no answer/EOS split is reported."""
    found = {r.extra.get("eos_token_id") for r in results}
    return found.pop() if len(found) == 1 and None not in found else None


def _pooled(results: Sequence[TokenPairResult], role: str,
            part: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(confidence, correct, label_prob, sequence index) over every token of `role`; `part` keeps only the answer's
    own tokens ("answer") or only the EOS tokens ("eos")."""
    seqs = [r.sequence(role) for r in results]
    keep = None
    if part is not None:
        if part not in PARTS:
            raise ValueError(f"part must be one of {list(PARTS)} or None, got {part!r}.")
        eos = eos_token_id_of(results)
        if eos is None:
            raise ValueError("these token records do not say which token is the EOS (scored before the EOS id was "
                             "recorded); score them again to split answer and EOS tokens.")
        keep = [[(t == eos) == (part == "eos") for t in s.token_ids] for s in seqs]

    def flat(values_of, dtype):
        if keep is None:
            return np.array([v for s in seqs for v in values_of(s)], dtype=dtype)
        return np.array([v for s, k in zip(seqs, keep) for v, kk in zip(values_of(s), k) if kk], dtype=dtype)

    conf = flat(lambda s: s.confidence, np.float64)
    corr = flat(lambda s: s.correct, bool)
    label = flat(lambda s: s.label_prob, np.float64)
    counts = [len(s.confidence) for s in seqs] if keep is None else [sum(k) for k in keep]
    group = np.repeat(np.arange(len(seqs)), counts)
    return np.clip(conf, 0.0, 1.0), corr, np.clip(label, 0.0, 1.0), group


def _mean_entry(values: np.ndarray, group: np.ndarray, n_resamples: int, seed: int) -> dict[str, Any]:
    from .metrics import bootstrap_ci

    entry: dict[str, Any] = {"value": float(values.mean())}
    if n_resamples > 0:
        _, low, high = bootstrap_ci(np.mean, values, n_resamples=n_resamples, seed=seed, groups=group)
        entry.update(ci=[low, high], ci_level=0.95, n_resamples=n_resamples, resampled="sequences")
    return entry


def token_metrics(confidence: np.ndarray, correct: np.ndarray, label_prob: np.ndarray, group: np.ndarray, *,
                  n_bins: int = 15, n_resamples: int = 1000, n_simulations: int = 200, seed: int = 0) -> dict:
    """Accuracy, mean confidence, ECE (equal width and equal mass), Brier and mean label probability of pooled
    tokens, intervals resampling whole sequences (`group`)."""
    from .metrics import ece_estimate

    correct_f = correct.astype(np.float64)
    out: dict[str, Any] = {"n_sequences": int(np.unique(group).size), "n_tokens": int(confidence.size)}
    out["accuracy"] = _mean_entry(correct_f, group, n_resamples, seed)
    out["confidence"] = _mean_entry(confidence, group, n_resamples, seed)
    out["overconfidence"] = {"value": out["confidence"]["value"] - out["accuracy"]["value"],
                             "definition": "mean confidence - accuracy"}
    for key, binning in (("ece", "equal_width"), ("ece_equal_mass", "equal_mass")):
        out[key] = ece_estimate(confidence, correct, n_bins=n_bins, binning=binning, groups=group,
                                n_resamples=n_resamples, n_simulations=n_simulations, seed=seed)
    out["brier"] = {**_mean_entry((confidence - correct_f) ** 2, group, n_resamples, seed), "form": "top_label"}
    out["label_prob"] = _mean_entry(label_prob, group, n_resamples, seed)
    return out


def summarize_token_results(results: Sequence[TokenPairResult], *, n_bins: int = 15, n_resamples: int = 1000,
                            n_simulations: int = 200, seed: int = 0) -> dict[str, Any]:
    """`{"chosen": metrics, "rejected": metrics}` (see `token_metrics`) over every token of the held-out pairs.

    Where the records say which token is the EOS, each role's metrics also hold `"parts"`: the same metrics over the
    answer's own tokens (`"answer"`) and over the EOS tokens alone (`"eos"`), with their own intervals (resampling
    the same sequences), so a gain that comes from learning when to stop is told apart from one on the answer.
    """
    if not results:
        raise ValueError("No token results to summarise.")
    options = dict(n_bins=n_bins, n_resamples=n_resamples, n_simulations=n_simulations, seed=seed)
    split = eos_token_id_of(results) is not None
    summary = {}
    for role in ROLES:
        summary[role] = token_metrics(*_pooled(results, role), **options)
        if split:
            parts = {}
            for part in PARTS:
                pooled = _pooled(results, role, part)
                if pooled[0].size:
                    parts[part] = token_metrics(*pooled, **options)
            summary[role]["parts"] = parts
    return summary


def token_curves(results: Sequence[TokenPairResult]) -> dict[str, tuple[list[float], list[bool]]]:
    """`{role: (confidences, correct)}` of every token, for reliability diagrams."""
    out = {}
    for role in ROLES:
        conf, corr, _, _ = _pooled(results, role)
        out[role] = (conf.tolist(), corr.tolist())
    return out


def paired_token_difference(a: Sequence[TokenPairResult], b: Sequence[TokenPairResult], metric: str = "ece", *,
                            role: str = "chosen", part: str | None = None, n_bins: int = 15,
                            n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """metric(a) − metric(b) over the tokens of the same pairs, with a paired bootstrap over pairs (the same
    resampled pairs for both models). `metric`: "ece", "ece_equal_mass", "accuracy" or "confidence"; `part`:
    every response token (None), the answer's own tokens ("answer") or the EOS alone ("eos")."""
    from .metrics import bootstrap_distribution, ece, interval_from_distribution

    by_id = {r.id: r for r in b}
    missing = [r.id for r in a if r.id not in by_id]
    if missing:
        raise ValueError(f"paired_token_difference: {len(missing)} pair(s) of `a` are not in `b`, e.g. {missing[:3]}.")
    b = [by_id[r.id] for r in a]
    conf_a, corr_a, _, group = _pooled(a, role, part)
    conf_b, corr_b, _, group_b = _pooled(b, role, part)
    if not np.array_equal(group, group_b):
        raise ValueError("paired_token_difference: the two runs scored different tokens for the same pairs.")
    fns = {"ece": functools.partial(ece, n_bins=n_bins),
           "ece_equal_mass": functools.partial(ece, n_bins=n_bins, binning="equal_mass"),
           "accuracy": lambda c, y: float(np.mean(y)), "confidence": lambda c, y: float(np.mean(c))}
    if metric not in fns:
        raise ValueError(f"metric must be one of {sorted(fns)}, got {metric!r}.")
    fn = fns[metric]

    def diff(ca, ya, cb, yb):
        return fn(ca, ya) - fn(cb, yb)

    scope = {"role": role, **({"part": part} if part is not None else {})}
    if n_resamples <= 0:
        return {"value": diff(conf_a, corr_a, conf_b, corr_b), "paired": True, **scope}
    point, values = bootstrap_distribution(diff, conf_a, corr_a, conf_b, corr_b, n_resamples=n_resamples, seed=seed,
                                           groups=group)
    method = "basic" if metric.startswith("ece") else "percentile"
    low, high = interval_from_distribution(point, values, 0.95, method)
    return {"value": point, "ci": [low, high], "ci_level": 0.95, "ci_method": method, "n_resamples": n_resamples,
            "paired": True, "resampled": "pairs", **scope}


def format_token_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table of `summarize_token_results` output: one row per role (all its tokens), then, where reported,
    its answer tokens and its EOS apart; intervals where present."""
    from .aggregate import format_cell

    keys = ("accuracy", "confidence", "ece", "ece_equal_mass", "brier")
    lines = ["| tokens | n seq. | n tokens | " + " | ".join(keys) + " | ECE debiased | ECE noise floor |",
             "|---|---|---|" + "---|" * (len(keys) + 2)]
    labels = {"answer": "answer tokens", "eos": "EOS"}
    for role, summary_of_role in summary.items():
        rows = [(role, summary_of_role)] + [(f"{role}: {labels[p]}", m)
                                            for p, m in summary_of_role.get("parts", {}).items()]
        for label, m in rows:
            ece = m["ece"]
            extra = [f"{ece['debiased']:.3f}" if "debiased" in ece else "-",
                     f"{ece['noise_floor']:.3f}" if "noise_floor" in ece else "-"]
            lines.append(f"| {label} | {m['n_sequences']} | {m['n_tokens']} | "
                         + " | ".join(format_cell(m.get(k)) for k in keys) + " | " + " | ".join(extra) + " |")
    return "\n".join(lines)
