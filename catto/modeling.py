"""Loading a causal LM and its tokenizer from a hub id, a local folder or a GGUF file, with errors that say what to do."""

from __future__ import annotations

import os

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` picks CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model_and_tokenizer(name_or_path: str, *, dtype: str = "float32", device: str = "auto",
                             gguf_file: str | None = None, trust_remote_code: bool = False):
    """`(model, tokenizer)` in eval mode on `device`; the tokenizer gets a pad token (EOS) if it has none.

    `name_or_path` is a hub id or a local folder; with `gguf_file` the weights come from that GGUF file inside the
    folder (transformers de-quantises it; needs the `gguf` package). Any failure to load is re-raised as an
    `OSError` naming the model and the usual fixes.

    Example:
        >>> model, tok = load_model_and_tokenizer("Qwen/Qwen3-0.6B", dtype="bfloat16")  # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {list(DTYPES)}, got {dtype!r}.")
    kwargs = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=DTYPES[dtype], **kwargs)
    except Exception as err:  # transformers raises OSError, ValueError, HF hub errors, ...
        where = "local folder" if os.path.isdir(name_or_path) else "hub id or path"
        raise OSError(
            f"Could not load model {name_or_path!r} ({where}{', GGUF file ' + gguf_file if gguf_file else ''}): "
            f"{type(err).__name__}: {err}. Check the path or id, that the hub is reachable (or HF_HUB_OFFLINE is "
            "set with the files cached), and for GGUF files that `gguf` is installed."
        ) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(resolve_device(device)).eval()
    return model, tokenizer
