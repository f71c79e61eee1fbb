"""Synthetic data and tiny models, built in code (no hub access): a small learnable MCQA generator, a word-level
tokenizer over the same words, tiny random Llama / Qwen2 models and a learnable synthetic preference task.

Used by the tests, the dry runs of the demo and the studies, and the overhead benchmark. Nothing here downloads
anything. torch, tokenizers, transformers and datasets are imported inside the functions that build models and
datasets, so that `import catto.data` stays light.
"""

from __future__ import annotations

import random

from .items import MCQAItem

SYNTHETIC_TASKS = ("copy", "alphabetical", "arithmetic")
# The tiny tokenizer's words (w0 .. w39): one source of truth for the tokenizer and the "copy" task.
WORDS = [f"w{i}" for i in range(40)]

_ALPHA_WORDS = ("apple", "banana", "cherry", "delta", "eagle", "falcon", "garden", "harbor", "island", "jungle",
                "kettle", "lemon", "mango", "needle", "orange", "pepper", "quartz", "river", "salmon", "tiger",
                "umbrella", "violet", "walnut", "yellow", "zebra")


def synthetic_mcqa(n: int, n_choices: int = 4, seed: int = 0, task: str = "copy") -> list[MCQAItem]:
    """`n` simple, learnable MCQA items, deterministic for `seed`; the gold letter is uniform over positions.

    Tasks:
        - "copy" (default): the question is a few words w0..w39 followed by "?", and the answer is its first word.
          Every token is in `MCQA_VOCAB`, so the tiny word-level test models can learn it (in cloze
          form it is a copy task, in letter form the model must also find the option's letter).
        - "alphabetical": "Which word comes first in alphabetical order?" over English words.
        - "arithmetic": "What is a + b?" with numeric options near the sum.

    Example:
        >>> items = synthetic_mcqa(2, seed=1)
        >>> all(item.choices[item.gold] == item.question.split()[0] for item in items)
        True
    """
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"task must be one of {list(SYNTHETIC_TASKS)}, got {task!r}.")
    limits = {"copy": 40, "alphabetical": len(_ALPHA_WORDS), "arithmetic": 14}  # arithmetic: 13 non-negative offsets
    if not 2 <= n_choices <= limits[task]:
        raise ValueError(f"n_choices must be in 2..{limits[task]} for task {task!r}, got {n_choices}.")
    rng = random.Random(seed)
    items = []
    for i in range(n):
        question, gold_text, choices = _SYNTHETIC[task](rng, n_choices)
        rng.shuffle(choices)
        items.append(MCQAItem(id=f"synthetic-{task}-{seed}-{i}", question=question, choices=tuple(choices),
                              gold=choices.index(gold_text), source=f"synthetic_{task}"))
    return items


def _copy_item(rng: random.Random, k: int) -> tuple[str, str, list[str]]:
    words = rng.sample(WORDS, k)  # distinct options; the question shows the answer first, then some distractors
    shown = [words[0]] + rng.sample(words[1:], rng.randint(1, k - 1))
    return " ".join(shown) + " ?", words[0], words


def _alphabetical_item(rng: random.Random, k: int) -> tuple[str, str, list[str]]:
    words = rng.sample(_ALPHA_WORDS, k)
    return "Which word comes first in alphabetical order?", min(words), words


def _arithmetic_item(rng: random.Random, k: int) -> tuple[str, str, list[str]]:
    a, b = rng.randint(0, 50), rng.randint(0, 50)
    total = a + b
    offsets = rng.sample([d for d in range(-13, 14) if d and total + d >= 0], k - 1)
    return f"What is {a} + {b}?", str(total), [str(total)] + [str(total + d) for d in offsets]


_SYNTHETIC = {"copy": _copy_item, "alphabetical": _alphabetical_item, "arithmetic": _arithmetic_item}


# ------------------------------------------------------------------------------------------------------------------
# Tiny models and a synthetic preference task

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>"]
VOCAB = SPECIAL + WORDS
# Extra tokens for MCQA prompts ("Question: ... A. w3 ... Answer: B"); punctuation is split off by the pre-tokenizer.
MCQA_VOCAB = VOCAB + list("ABCDEFGH") + [".", ":", "?", "Question", "Answer"]


def make_tokenizer(vocab: list[str] = VOCAB):
    """Word-level `PreTrainedTokenizerFast` over `vocab` (default `VOCAB`; `MCQA_VOCAB` for lettered prompts);
    every word is one token and punctuation is split off ("A." -> "A", ".")."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )


def make_model(arch: str = "llama", hidden: int = 32, layers: int = 2, seed: int = 0, **overrides):
    """A tiny random causal LM over `VOCAB` (float32, eager attention, deterministic from `seed`)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

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
):
    """A learnable `datasets.Dataset` task: the chosen answer repeats the prompt's first word, the rejected one a random other word.

    With `noise` > 0 that share of rows prefers a random word instead, so no model can be right more often than about
    `1 - noise` on the answer token: a model that becomes sure of the rule is overconfident.
    """
    from datasets import Dataset

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
