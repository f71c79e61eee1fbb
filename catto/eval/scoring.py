"""Model + tokenizer + MCQA items -> per-option probabilities, batched, resumable.

Two scoring modes (docs/design.md §5), both recorded by name in every result:

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

from ..data.items import MCQAItem
from ..data.prompts import ClozeFormat, LetterFormat, apply_chat_template
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


def tokenizer_name(tokenizer) -> str:
    """A name for `tokenizer` in error messages (its hub id or folder, else its class)."""
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
                f"{tokenizer_name(tokenizer)!r} (the prompt's end and the letter tokenize as {pieces}). Use "
                "`--scoring cloze`, or a prompt format whose answer letter is one token."
            )
        ids.append(full[-1])
    if len(set(ids)) != len(ids):
        raise ValueError(f"Option letters {list(letters)} share token ids {ids} in {tokenizer_name(tokenizer)!r}.")
    return ids


def left_padded_batch(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token lists; returns input_ids, attention_mask and position ids counted over real tokens only (so a
    padded row sees the same positions as the unpadded sequence): the batch layout every scoring forward uses.

    >>> ids, mask, pos = left_padded_batch([[5, 6, 7], [8]], pad_id=0, device="cpu")
    >>> ids.tolist(), mask.tolist(), pos.tolist()
    ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]], [[0, 1, 2], [0, 0, 0]])
    """
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[i, width - len(seq):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def check_finite_logits(*tensors: torch.Tensor) -> None:
    """Raise a `FloatingPointError` naming the usual cause (an fp16 overflow) if any tensor holds NaN or inf."""
    if not all(torch.isfinite(t).all() for t in tensors):
        raise FloatingPointError(
            "The model produced NaN/inf logits; check the dtype (fp16 overflows on some models; use bf16 or fp32)."
        )


def _forward_last_logits(model, ids, mask, positions, n_last: int) -> torch.Tensor:
    """float32 logits of the last `n_last` positions, `(batch, n_last, vocab)`."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=n_last, use_cache=False)
    logits = out.logits[:, -n_last:].float()
    check_finite_logits(logits)
    return logits


def model_device(model) -> torch.device:
    """The device of `model`'s first parameter (where its inputs go)."""
    return next(model.parameters()).device


def pad_token_id(tokenizer) -> int:
    """The id used for padding: the pad token, else EOS (an error naming the tokenizer if it has neither)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError(f"Tokenizer {tokenizer_name(tokenizer)!r} has neither a pad nor an EOS token.")
    return pad


def _batches(order: list[int], size: int):
    for start in range(0, len(order), size):
        yield order[start:start + size]


@torch.no_grad()
def score_letter(model, tokenizer, items: Sequence[MCQAItem], *, config: ScoringConfig = ScoringConfig(),
                 fewshot: Sequence[MCQAItem] = (), batch_size: int = 16, progress: bool = True,
                 on_batch: Callable[[list[ItemResult]], None] | None = None) -> list[ItemResult]:
    """Letter scoring: one batched forward per `batch_size` items, reading only the answer position's logits."""
    device = model_device(model)
    prompts = []
    for item in items:
        text = config.letter_format.prompt(item, fewshot)
        if config.chat_template:
            text = apply_chat_template(tokenizer, text.removesuffix("Answer:").rstrip(), answer_prefix="Answer:")
        prompts.append(text)
    encoded = [tokenizer(p, add_special_tokens=not config.chat_template)["input_ids"] for p in prompts]
    letter_ids_cache: dict[tuple[int, str], list[int]] = {}
    pad = pad_token_id(tokenizer)
    order = sorted(range(len(items)), key=lambda i: len(encoded[i]))  # similar lengths share a batch: less padding
    results: dict[int, ItemResult] = {}
    bar = tqdm(total=len(items), desc="letter scoring", unit="item", disable=not progress)
    for idx in _batches(order, batch_size):
        ids, mask, pos = left_padded_batch([encoded[i] for i in idx], pad, device)
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


def cloze_requests(tokenizer, items: Sequence[MCQAItem], fmt: ClozeFormat):
    """Per item: the context token ids and each option's continuation token ids.

    Like lm-eval's `_encode_pair`: the whole string is tokenized and split at the context's length, so merges across
    the boundary are scored as the model would see them; if the context's tokens are not a prefix of the whole
    (a merge across the boundary), the continuation is tokenized on its own after the context instead.
    """
    out = []
    for item in items:
        context = fmt.context(item)
        ctx_ids = tokenizer(context)["input_ids"]
        conts = []
        for continuation in fmt.continuations(item):
            whole = tokenizer(context + continuation)["input_ids"]
            if len(whole) > len(ctx_ids) and whole[: len(ctx_ids)] == ctx_ids:
                conts.append(whole[len(ctx_ids):])
            else:
                conts.append(tokenizer(continuation, add_special_tokens=False)["input_ids"])
            if not conts[-1]:
                raise ValueError(f"Item {item.id!r}: option {len(conts) - 1} tokenizes to nothing; cannot score it.")
        out.append((ctx_ids, conts))
    return out


CONTEXT_SHARING = ("auto", "layout", "cache", "none")


def resolve_context_sharing(model, share_context: bool | str) -> str:
    """The cloze path for `model`: `"layout"` (one row per item: the context once, then every option behind a mask
    that hides the other options, `catto.core.prefix_sharing.continuation_layout`; sdpa/eager text models),
    `"cache"` (the context once, its KV cache repeated per option), `"none"` (context + option run K times, as
    lm-eval does). `True`/`"auto"` picks layout where the model's attention takes the mask, else cache; `False` is
    `"none"`. All three give the same numbers up to float rounding (tests/test_scoring.py)."""
    mode = {True: "auto", False: "none"}.get(share_context, share_context)
    if mode not in CONTEXT_SHARING:
        raise ValueError(f"`share_context` must be True, False or one of {list(CONTEXT_SHARING)}, got {share_context!r}.")
    if mode == "auto":
        from .token import backbone_and_head, can_share_prefix

        try:
            backbone_and_head(model)
        except ValueError:
            return "cache"
        return "layout" if can_share_prefix(model.config) else "cache"
    return mode


@torch.no_grad()
def score_cloze(model, tokenizer, items: Sequence[MCQAItem], *, config: ScoringConfig = ScoringConfig("cloze"),
                batch_size: int = 32, progress: bool = True, share_context: bool | str = True,
                on_batch: Callable[[list[ItemResult]], None] | None = None) -> list[ItemResult]:
    """Cloze scoring: log-likelihood of every option text; `batch_size` counts (item, option) sequences.

    With `share_context` (default) each item's context runs through the model once, not once per option as in
    lm-eval: all options in one masked row where the model's attention takes a custom mask, else on the context's
    repeated KV cache (`resolve_context_sharing`). Every path gives the same numbers up to float rounding (tested).
    """
    device = model_device(model)
    mode = resolve_context_sharing(model, share_context)
    score = {"layout": _cloze_batch_layout, "cache": _cloze_batch_shared, "none": _cloze_batch_full}[mode]
    requests = cloze_requests(tokenizer, items, config.cloze_format)
    pad = pad_token_id(tokenizer)
    results: dict[int, ItemResult] = {}
    bar = tqdm(total=len(items), desc="cloze scoring", unit="item", disable=not progress)
    order = sorted(range(len(items)), key=lambda i: len(requests[i][0]))
    batch: list[int] = []
    for position, i in enumerate(order):  # items whose options together fill about `batch_size` sequences
        batch.append(i)
        n_sequences = sum(len(requests[j][1]) for j in batch)
        if n_sequences >= batch_size or position == len(order) - 1:
            logliks = score(model, [requests[j] for j in batch], pad, device)
            done = [_cloze_result(items[j], ll, [len(c) for c in requests[j][1]], config)
                    for j, ll in zip(batch, logliks)]
            _emit(batch, done, results, on_batch, bar)
            batch = []
    bar.close()
    return [results[i] for i in range(len(items))]


def _cloze_batch_full(model, requests, pad, device) -> list[list[float]]:
    """Every (context + option) sequence run in full; the continuation log-probs read off the last positions."""
    rows = [(r, ctx + cont, len(cont)) for r, (ctx, conts) in enumerate(requests) for cont in conts]
    n_last = max(n for *_, n in rows)
    ids, mask, pos = left_padded_batch([seq for _, seq, _ in rows], pad, device)
    # Logits at position t predict token t + 1: keep the n_last + 1 last positions, drop the final prediction.
    log_probs = _forward_last_logits(model, ids, mask, pos, n_last + 1)[:, :-1].log_softmax(-1)
    token_lp = log_probs.gather(-1, ids[:, -n_last:, None])[..., 0]
    out = [[] for _ in requests]
    for row, (r, _, n) in enumerate(rows):
        out[r].append(float(token_lp[row, -n:].sum()))
    return out


def _cloze_batch_shared(model, requests, pad, device) -> list[list[float]]:
    """Contexts once (left-padded, KV cache kept), then all options on top of the repeated cache (right-padded)."""
    ctx_ids, ctx_mask, ctx_pos = left_padded_batch([ctx for ctx, _ in requests], pad, device)
    out = model(input_ids=ctx_ids, attention_mask=ctx_mask, position_ids=ctx_pos, use_cache=True, logits_to_keep=1)
    first_lp = out.logits[:, -1].float().log_softmax(-1)  # predicts each option's first token
    owner = torch.tensor([r for r, (_, conts) in enumerate(requests) for _ in conts], device=device)
    conts = [cont for _, cs in requests for cont in cs]
    cache = out.past_key_values
    cache.reorder_cache(owner)  # one copy of the item's context cache per option
    width = max(len(c) for c in conts)
    cont_ids = torch.full((len(conts), width), pad, dtype=torch.long)
    cont_mask = torch.zeros((len(conts), width), dtype=torch.long)
    for k, c in enumerate(conts):
        cont_ids[k, : len(c)] = torch.tensor(c)
        cont_mask[k, : len(c)] = 1
    cont_ids, cont_mask = cont_ids.to(device), cont_mask.to(device)
    n_ctx = ctx_mask.sum(-1)[owner]
    positions = n_ctx[:, None] + torch.arange(width, device=device)[None]
    mask = torch.cat([ctx_mask[owner], cont_mask], dim=1)
    token_lp = first_lp[owner].gather(-1, cont_ids[:, :1])  # (R, 1)
    if width > 1:
        logits = model(input_ids=cont_ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                       past_key_values=cache, use_cache=False).logits.float()
        rest = logits.log_softmax(-1).gather(-1, cont_ids[:, 1:, None])[..., 0]
        token_lp = torch.cat([token_lp, rest], dim=1)
    check_finite_logits(first_lp, token_lp)
    sums = (token_lp * cont_mask).sum(-1).tolist()
    out_lists = [[] for _ in requests]
    for k, r in enumerate(owner.tolist()):
        out_lists[r].append(sums[k])
    return out_lists


def continuation_statistics(model, requests, pad: int, device, token_chunk_size: int = 1024):
    """One pass over `requests` `[(context, [continuation, ...]), ...]` in the one-row layout
    (`continuation_layout`): `(label log-prob, top-1 log-prob, top-1 id, targets)` of every continuation token, in
    request and continuation order. Only the positions that predict continuation tokens go through the LM head (the
    tiled kernel: no `(rows, seq, vocab)` logits)."""
    from ..core.prefix_sharing import backend_mask, continuation_layout
    from .token import backbone_and_head, head_statistics

    backbone, head, config = backbone_and_head(model)
    layout = continuation_layout(requests, pad_token_id=pad)
    positions = layout["position_ids"].to(device)
    dtype = next(backbone.parameters()).dtype
    mask = backend_mask(layout["mask"].to(device), positions, backbone.config,
                        dtype if dtype.is_floating_point else torch.float32)
    hidden = backbone(input_ids=layout["input_ids"].to(device), attention_mask=mask, position_ids=positions,
                      use_cache=False).last_hidden_state
    rows = [p for per_request in layout["predictors"] for predictors in per_request for p in predictors]
    targets = torch.tensor([t for _, conts in requests for cont in conts for t in cont])
    picked = hidden.reshape(-1, hidden.size(-1))[torch.tensor(rows, device=hidden.device)]
    return (*head_statistics(picked, head, config, targets, token_chunk_size), targets)


def _cloze_batch_layout(model, requests, pad, device) -> list[list[float]]:
    """All options of each item in one row behind the context (`continuation_statistics`)."""
    label_logp = continuation_statistics(model, requests, pad, device)[0].double().cpu().tolist()
    out, offset = [], 0
    for _, conts in requests:
        sums = []
        for cont in conts:
            sums.append(sum(label_logp[offset: offset + len(cont)]))
            offset += len(cont)
        out.append(sums)
    return out


def _cloze_result(item: MCQAItem, loglik: list[float], n_tokens: list[int], config: ScoringConfig) -> ItemResult:
    """Option probabilities from the configured normalisation; all three kept in `extra`."""
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
                progress: bool = True, share_context: bool | str = True) -> list[ItemResult]:
    """Score `items` in `config.scoring` mode; with `results_path`, append each batch to that JSONL and, on a
    re-run, skip the items it already holds (resume after an interruption).

    Example:
        >>> from catto.data.synthetic import make_model, make_tokenizer
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
                            on_batch=on_batch, share_context=share_context)
    if store is None:
        return fresh
    return store.ordered(ids)
