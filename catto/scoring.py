"""Model + tokenizer + MCQA items -> per-option probabilities, batched, resumable.

Two scoring modes (DESIGN.md §5), both recorded by name in every result:

- **letter** (MMLU style): the prompt lists lettered options and ends with "Answer:"; one forward per batch of items
  reads the logits of the option-letter tokens at the answer position. Option probabilities are the softmax over
  the letters; the full-vocabulary probabilities at that position are kept too (`extra.max_prob_full_vocab`, the
  MSP paper's confidence, `extra.letter_probs_full_vocab`, and `extra.option_mass`, the share of the next-token
  mass on the letters).
- **cloze** (HellaSwag / lm-eval style): each option text is scored as a continuation of the question; the sum,
  per-token mean and per-character mean log-likelihoods are all kept (`extra.loglik_sum|token|char`), and the
  option probabilities are the softmax over the options of the chosen normalisation (`"char"` = lm-eval's
  acc_norm by default). All options of many items are batched together.

Sequences are left-padded with position ids from the attention mask, and only the last positions' logits are
computed (`logits_to_keep`), so no `(batch, seq, vocab)` tensor is built beyond the few scored positions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .data.items import MCQAItem
from .data.prompts import ClozeFormat, LetterFormat, apply_chat_template
from .results import ItemResult, ResultsFile

SCORING_MODES = ("letter", "cloze")
CLOZE_NORMALIZATIONS = ("sum", "token", "char")


@dataclass(frozen=True)
class ScoringConfig:
    """Every choice that changes the numbers; written next to the results so a resume cannot mix runs."""

    scoring: str = "letter"
    cloze_normalization: str = "char"
    letter_format: LetterFormat = LetterFormat()
    cloze_format: ClozeFormat = ClozeFormat()
    chat_template: bool = False
    num_fewshot: int = 0

    def __post_init__(self) -> None:
        if self.scoring not in SCORING_MODES:
            raise ValueError(f"`scoring` must be one of {list(SCORING_MODES)}, got {self.scoring!r}.")
        if self.cloze_normalization not in CLOZE_NORMALIZATIONS:
            raise ValueError(
                f"`cloze_normalization` must be one of {list(CLOZE_NORMALIZATIONS)}, got {self.cloze_normalization!r}."
            )

    @property
    def confidence_definition(self) -> str:
        if self.scoring == "letter":
            return "softmax over the option-letter logits at the answer position; confidence = max option probability"
        return (f"softmax over options of the {self.cloze_normalization}-normalised continuation log-likelihood; "
                "confidence = max option probability")

    def to_dict(self) -> dict:
        return {
            "scoring": self.scoring,
            "cloze_normalization": self.cloze_normalization if self.scoring == "cloze" else None,
            "letter_format": vars(self.letter_format) if self.scoring == "letter" else None,
            "cloze_format": vars(self.cloze_format) if self.scoring == "cloze" else None,
            "chat_template": self.chat_template,
            "num_fewshot": self.num_fewshot,
            "confidence": self.confidence_definition,
        }


def _tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def letter_token_ids(tokenizer, prompt: str, letters: Sequence[str]) -> list[int]:
    """Token id of each option letter as the next token after `prompt`.

    The letter follows the prompt with a space (" A" after "Answer:") unless the prompt already ends in whitespace
    (a chat template's generation prompt). Tokenizers merge differently (" A" one token in GPT-2 style BPE, "▁A" in
    SentencePiece), so the id is read off the tokenization of `prompt + letter` itself; a letter that does not add
    exactly one token after the prompt is an error naming the tokenizer.
    """
    sep = "" if prompt[-1:].isspace() else " "
    base = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = []
    for letter in letters:
        full = tokenizer(prompt + sep + letter, add_special_tokens=False)["input_ids"]
        if len(full) != len(base) + 1 or full[: len(base)] != base:
            pieces = tokenizer.convert_ids_to_tokens(full[len(base) - 1:]) if len(full) >= len(base) else full
            raise ValueError(
                f"Option letter {letter!r} is not a single token after {prompt[-15:]!r} for tokenizer "
                f"{_tokenizer_name(tokenizer)!r} (the prompt's end and the letter tokenize as {pieces}). Use "
                "`--scoring cloze`, or a prompt format whose answer letter is one token."
            )
        ids.append(full[-1])
    if len(set(ids)) != len(ids):
        raise ValueError(f"Option letters {list(letters)} share token ids {ids} in {_tokenizer_name(tokenizer)!r}.")
    return ids


def _left_padded(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token lists; returns input_ids, attention_mask and position ids counted over real tokens only."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[i, width - len(seq):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def _forward_last_logits(model, ids, mask, positions, n_last: int) -> torch.Tensor:
    """float32 logits of the last `n_last` positions, `(batch, n_last, vocab)`."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=n_last, use_cache=False)
    logits = out.logits[:, -n_last:].float()
    if not torch.isfinite(logits).all():
        raise FloatingPointError(
            "The model produced NaN/inf logits; check the dtype (fp16 overflows on some models; use bf16 or fp32)."
        )
    return logits


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError(f"Tokenizer {_tokenizer_name(tokenizer)!r} has neither a pad nor an EOS token.")
    return pad


def _batches(order: list[int], size: int):
    for start in range(0, len(order), size):
        yield order[start:start + size]


@torch.no_grad()
def score_letter(model, tokenizer, items: Sequence[MCQAItem], *, config: ScoringConfig = ScoringConfig(),
                 fewshot: Sequence[MCQAItem] = (), batch_size: int = 16, progress: bool = True,
                 on_batch: Callable[[list[ItemResult]], None] | None = None) -> list[ItemResult]:
    """Letter scoring: one batched forward per `batch_size` items, reading only the answer position's logits."""
    device = _model_device(model)
    prompts = []
    for item in items:
        text = config.letter_format.prompt(item, fewshot)
        if config.chat_template:
            text = apply_chat_template(tokenizer, text.removesuffix("Answer:").rstrip(), answer_prefix="Answer:")
        prompts.append(text)
    encoded = [tokenizer(p, add_special_tokens=not config.chat_template)["input_ids"] for p in prompts]
    letter_ids_cache: dict[tuple[int, str], list[int]] = {}
    pad = _pad_id(tokenizer)
    order = sorted(range(len(items)), key=lambda i: len(encoded[i]))  # similar lengths share a batch: less padding
    results: dict[int, ItemResult] = {}
    bar = tqdm(total=len(items), desc="letter scoring", unit="item", disable=not progress)
    for idx in _batches(order, batch_size):
        ids, mask, pos = _left_padded([encoded[i] for i in idx], pad, device)
        logits = _forward_last_logits(model, ids, mask, pos, 1)[:, 0]
        log_probs = logits.log_softmax(-1)
        batch_results = []
        for row, i in enumerate(idx):
            item = items[i]
            key = (len(item.choices), prompts[i][-20:])
            if key not in letter_ids_cache:
                letter_ids_cache[key] = letter_token_ids(tokenizer, prompts[i], item.letters)
            letter_ids = torch.tensor(letter_ids_cache[key], device=device)
            option_probs = logits[row, letter_ids].softmax(-1)
            full = log_probs[row, letter_ids].exp()
            pred = int(option_probs.argmax())
            batch_results.append(_result(item, option_probs.tolist(), pred, extra={
                "letter_probs_full_vocab": full.tolist(),
                "option_mass": float(full.sum()),
                "max_prob_full_vocab": float(log_probs[row].max().exp()),
            }))
        _emit(idx, batch_results, results, on_batch, bar)
    bar.close()
    return [results[i] for i in range(len(items))]


@torch.no_grad()
def score_cloze(model, tokenizer, items: Sequence[MCQAItem], *, config: ScoringConfig = ScoringConfig("cloze"),
                batch_size: int = 32, progress: bool = True,
                on_batch: Callable[[list[ItemResult]], None] | None = None) -> list[ItemResult]:
    """Cloze scoring: log-likelihood of every option text; `batch_size` counts (item, option) sequences."""
    device = _model_device(model)
    fmt = config.cloze_format
    requests = []  # (item index, option index, context+continuation ids, number of continuation tokens)
    for i, item in enumerate(items):
        context = fmt.context(item)
        ctx_ids = tokenizer(context)["input_ids"]
        for j, continuation in enumerate(fmt.continuations(item)):
            # Like lm-eval's `_encode_pair`: tokenize the whole string and split at the context's length, so merges
            # across the boundary are scored as the model would see them. A whitespace-only context end moves over.
            whole = tokenizer(context + continuation)["input_ids"]
            n_cont = len(whole) - len(ctx_ids)
            if n_cont < 1 or whole[: len(ctx_ids)] != ctx_ids:
                whole = ctx_ids + tokenizer(continuation, add_special_tokens=False)["input_ids"]
                n_cont = len(whole) - len(ctx_ids)
            requests.append((i, j, whole, n_cont))
    pad = _pad_id(tokenizer)
    loglik = [[0.0] * len(item.choices) for item in items]
    n_tokens = [[0] * len(item.choices) for item in items]
    remaining = [len(item.choices) for item in items]
    order = sorted(range(len(requests)), key=lambda r: len(requests[r][2]))
    results: dict[int, ItemResult] = {}
    bar = tqdm(total=len(items), desc="cloze scoring", unit="item", disable=not progress)
    for idx in _batches(order, batch_size):
        batch = [requests[r] for r in idx]
        n_last = max(n for *_, n in batch)
        ids, mask, pos = _left_padded([seq for _, _, seq, _ in batch], pad, device)
        # Logits at position t predict token t + 1: keep the n_last + 1 last positions, drop the final prediction.
        logits = _forward_last_logits(model, ids, mask, pos, n_last + 1)[:, :-1]
        log_probs = logits.log_softmax(-1)
        targets = ids[:, -n_last:]
        token_lp = log_probs.gather(-1, targets[..., None])[..., 0]
        done = []
        for row, (i, j, _, n_cont) in enumerate(batch):
            loglik[i][j] = float(token_lp[row, -n_cont:].sum())
            n_tokens[i][j] = n_cont
            remaining[i] -= 1
            if remaining[i] == 0:
                done.append(i)
        batch_results = [_cloze_result(items[i], loglik[i], n_tokens[i], config) for i in done]
        _emit(done, batch_results, results, on_batch, bar)
    bar.close()
    return [results[i] for i in range(len(items))]


def _cloze_result(item: MCQAItem, loglik: list[float], n_tokens: list[int], config: ScoringConfig) -> ItemResult:
    chars = [len(c) for c in item.choices]
    scores = {
        "sum": loglik,
        "token": [lp / n for lp, n in zip(loglik, n_tokens)],
        "char": [lp / c for lp, c in zip(loglik, chars)],
    }
    chosen = torch.tensor(scores[config.cloze_normalization], dtype=torch.float64)
    option_probs = chosen.softmax(-1)
    pred = int(chosen.argmax())
    return _result(item, option_probs.tolist(), pred, extra={
        "loglik_sum": loglik, "loglik_token": scores["token"], "loglik_char": scores["char"], "n_tokens": n_tokens,
        # lm-eval's acc / acc_norm predictions, whatever normalisation the probabilities use
        "pred_sum": int(torch.tensor(loglik).argmax()), "pred_char": int(torch.tensor(scores["char"]).argmax()),
    })


def _result(item: MCQAItem, option_probs: list[float], pred: int, extra: dict) -> ItemResult:
    return ItemResult(
        id=item.id, option_probs=option_probs, prediction=pred, confidence=option_probs[pred], gold=item.gold,
        correct=None if item.gold is None else pred == item.gold, source=item.source, subject=item.subject,
        extra=extra,
    )


def _emit(indices, batch_results, results, on_batch, bar) -> None:
    for i, r in zip(indices, batch_results):
        results[i] = r
    if on_batch is not None:
        on_batch(batch_results)
    bar.update(len(batch_results))


def score_items(model, tokenizer, items: Sequence[MCQAItem], *, config: ScoringConfig = ScoringConfig(),
                fewshot: Sequence[MCQAItem] = (), batch_size: int = 16, results_path: str | os.PathLike | None = None,
                progress: bool = True) -> list[ItemResult]:
    """Score `items` in `config.scoring` mode; with `results_path`, append each batch to that JSONL and, on a
    re-run, skip the items it already holds (resume after an interruption).

    Example:
        >>> from catto.synthetic import make_model, make_tokenizer
        >>> from catto.data import MCQAItem
        >>> items = [MCQAItem("q1", "w1 w2", ("w3", "w4"), gold=0)]
        >>> res = score_items(make_model(), make_tokenizer(), items, config=ScoringConfig("cloze"), progress=False)
        >>> len(res[0].option_probs), round(sum(res[0].option_probs), 6)
        (2, 1.0)
    """
    if config.num_fewshot != len(fewshot):
        raise ValueError(f"config.num_fewshot={config.num_fewshot} but {len(fewshot)} demonstrations were given.")
    store = ResultsFile(results_path) if results_path is not None else None
    todo = [item for item in items if store is None or item.id not in store]
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError("Item ids must be unique to resume and join results; found duplicates.")
    on_batch = store.append if store is not None else None
    if config.scoring == "letter":
        fresh = score_letter(model, tokenizer, todo, config=config, fewshot=fewshot, batch_size=batch_size,
                             progress=progress, on_batch=on_batch)
    else:
        fresh = score_cloze(model, tokenizer, todo, config=config, batch_size=batch_size, progress=progress,
                            on_batch=on_batch)
    if store is None:
        return fresh
    return store.ordered(ids)
