"""Tiny random models, a tokenizer built in code and a learnable synthetic preference task (no hub access).

Used by the tests, the overhead benchmark and `catto demo --synthetic`. Nothing here downloads anything.
"""

from __future__ import annotations

import random

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from .data.synthetic import WORDS

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>"]
VOCAB = SPECIAL + WORDS
# Extra tokens for MCQA prompts ("Question: ... A. w3 ... Answer: B"); punctuation is split off by the pre-tokenizer.
MCQA_VOCAB = VOCAB + list("ABCDEFGH") + [".", ":", "?", "Question", "Answer"]


def make_tokenizer(vocab: list[str] = VOCAB) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over `vocab` (default `VOCAB`; `MCQA_VOCAB` for lettered prompts); every word is one
    token and punctuation is split off ("A." -> "A", ".")."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )


def make_model(arch: str = "llama", hidden: int = 32, layers: int = 2, seed: int = 0, **overrides):
    """A tiny random causal LM over `VOCAB` (float32, eager attention, deterministic from `seed`)."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(VOCAB), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
        eos_token_id=1, bos_token_id=2, tie_word_embeddings=False,
    )
    common.update(overrides)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        raise ValueError(arch)
    model.config._attn_implementation = "eager"
    return model


def preference_dataset(
    n: int = 16, seed: int = 0, prompt_len: int = 4, answer_len: int = 2, noise: float = 0.0
) -> Dataset:
    """A learnable task: the chosen answer repeats the prompt's first word, the rejected one a random other word.

    With `noise` > 0 that share of rows prefers a random word instead, so no model can be right more often than about
    `1 - noise` on the answer token: a model that becomes sure of the rule is overconfident.
    """
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = [rng.choice(WORDS) for _ in range(prompt_len)]
        good = prompt[0] if rng.random() >= noise else rng.choice(WORDS)
        bad = rng.choice([w for w in WORDS if w != good])
        rows.append({
            "prompt": " ".join(prompt),
            "chosen": " " + " ".join([good] * answer_len),
            "rejected": " " + " ".join([bad] * answer_len),
        })
    return Dataset.from_list(rows)
