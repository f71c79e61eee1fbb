"""Cloze MCQA scoring and held-out token calibration of the same items in one forward pass.

The study and the demo evaluate every model twice on the same questions: cloze scoring reads each option's
log-likelihood after the question's context (`catto.eval.scoring`), and the token evaluation reads the per-token
confidence of the answer-text pair built from the same item, gold option + EOS against one wrong option + EOS, after
the same context (`catto.eval.token`). Both run the context through the model. Here one row per item holds the
context once and every option behind it (`catto.core.prefix_sharing.continuation_layout`), the EOS appended to the
two options the pair uses (an appended token changes nothing before it), and one pass of the tiled LM-head kernel
over the scored positions gives both results: the same records, up to float rounding, as the two evaluations apart
(tests/test_joint_eval.py).

An item joins the pass only where both evaluations see the same tokens: the pair's prompt tokens equal the cloze
context's, the chosen and rejected answers (EOS aside) equal two of the cloze continuations, and nothing is truncated.
Any other item (a merge across the prompt boundary, a chat template, a too-long prompt), and any model whose attention
cannot take the mask, is left to the two evaluations apart: `score_cloze_and_tokens` returns only what it computed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data.items import MCQAItem
from .results import ItemResult
from .scoring import (
    ScoringConfig,
    _cloze_result,
    cloze_requests,
    continuation_statistics,
    model_device,
    pad_token_id,
    resolve_context_sharing,
)
from .token import TokenEvalConfig, TokenPairResult, TokenSequence, tokenize_pair


def joint_plan(tokenizer, items: Sequence[MCQAItem], pairs: Sequence[Mapping[str, Any]], scoring: ScoringConfig,
               token: TokenEvalConfig) -> list[tuple[int, list[int], list[list[int]], int, int, list[int], list[int]]]:
    """Per item that can join the pass: `(index, context, options, gold, rejected option, chosen, rejected)`, the
    last two as the token evaluation scores them (EOS included when `token.include_eos`)."""
    if scoring.scoring != "cloze" or scoring.num_fewshot or scoring.chat_template:
        return []
    eos = tokenizer.eos_token_id
    plan = []
    for i, ((context, options), item, row) in enumerate(zip(cloze_requests(tokenizer, items, scoring.cloze_format),
                                                            items, pairs)):
        if str(row.get("id")) != str(item.id) or not isinstance(row.get("prompt"), str):
            continue
        prompt, chosen, rejected = tokenize_pair(tokenizer, row)
        if not token.include_eos:
            chosen = chosen[:-1] if chosen and chosen[-1] == eos else chosen
            rejected = rejected[:-1] if rejected and rejected[-1] == eos else rejected
        if prompt != context or len(prompt) + max(len(chosen), len(rejected)) > token.max_length:
            continue

        def option_of(completion: list[int]) -> int | None:
            body, tail = (completion[:-1], completion[-1:]) if token.include_eos else (completion, [])
            if token.include_eos and tail != [eos]:
                return None
            return next((k for k, option in enumerate(options) if option == body), None)

        gold, wrong = option_of(chosen), option_of(rejected)
        if gold is None or wrong is None or gold != item.gold or wrong == gold:
            continue
        plan.append((i, context, options, gold, wrong, chosen, rejected))
    return plan


@torch.no_grad()
def score_cloze_and_tokens(model, tokenizer, items: Sequence[MCQAItem], pairs: Sequence[Mapping[str, Any]], *,
                           scoring: ScoringConfig, token: TokenEvalConfig, batch_size: int = 16, progress: bool = False,
                           on_batch: Callable[[list[ItemResult], list[TokenPairResult]], None] | None = None,
                           ) -> tuple[dict[str, ItemResult], dict[str, TokenPairResult]]:
    """`({item id: cloze result}, {pair id: token result})` for the items that can join one pass (`joint_plan`);
    `pairs[i]` is `items[i]`'s answer-text pair. `batch_size` counts option sequences per forward, as in
    `score_cloze`; `on_batch` receives each batch's results (to append them to results files as they come). Empty
    when the model's attention cannot take the shared mask."""
    if len(items) != len(pairs):
        raise ValueError(f"score_cloze_and_tokens got {len(items)} items and {len(pairs)} pairs; one pair per item.")
    if resolve_context_sharing(model, True) != "layout":
        return {}, {}
    plan = joint_plan(tokenizer, items, pairs, scoring, token)
    device, pad, eos = model_device(model), pad_token_id(tokenizer), tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    cloze_out: dict[str, ItemResult] = {}
    token_out: dict[str, TokenPairResult] = {}
    order = sorted(range(len(plan)), key=lambda k: len(plan[k][1]) + sum(len(o) for o in plan[k][2]))
    bar = tqdm(total=len(plan), desc="cloze + token (one pass)", unit="item", disable=not progress)
    try:
        batch: list[int] = []
        for position, k in enumerate(order):
            batch.append(k)
            if sum(len(plan[j][2]) for j in batch) < batch_size and position < len(order) - 1:
                continue
            entries = [plan[j] for j in batch]
            # the two options of the pair carry the token evaluation's tail (the EOS) behind them
            requests = [(ctx, [chosen if o == gold else rejected if o == wrong else option
                               for o, option in enumerate(options)])
                        for _, ctx, options, gold, wrong, chosen, rejected in entries]
            label_logp, top_logp, top_ids, targets = continuation_statistics(model, requests, pad, device,
                                                                             token.token_chunk_size)
            label_logp, top_logp = label_logp.double().cpu(), top_logp.float().cpu()
            correct = (top_ids.cpu() == targets).tolist()
            offset, new_cloze, new_token = 0, [], []
            for (i, ctx, options, gold, wrong, chosen, rejected), (_, conts) in zip(entries, requests):
                sums, roles = [], {}
                for o, (option, cont) in enumerate(zip(options, conts)):
                    part = slice(offset, offset + len(cont))
                    sums.append(float(label_logp[offset: offset + len(option)].sum()))
                    if o in (gold, wrong):
                        roles["chosen" if o == gold else "rejected"] = TokenSequence(
                            list(cont), top_logp[part].exp().tolist(), correct[part],
                            label_logp[part].exp().float().tolist())
                    offset += len(cont)
                item, row = items[i], pairs[i]
                new_cloze.append(_cloze_result(item, sums, [len(o) for o in options], scoring))
                new_token.append(TokenPairResult(
                    id=str(row["id"]), chosen=roles["chosen"], rejected=roles["rejected"], n_prompt_tokens=len(ctx),
                    truncated=False, source=row.get("source"), subject=row.get("subject"),
                    extra={"eos_token_id": eos} if eos is not None else {}))
            cloze_out.update((r.id, r) for r in new_cloze)
            token_out.update((r.id, r) for r in new_token)
            if on_batch is not None:
                on_batch(new_cloze, new_token)
            bar.update(len(new_cloze))
            batch = []
    finally:
        bar.close()
        model.train(was_training)
    return cloze_out, token_out
