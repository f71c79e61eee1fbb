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

    Example (needs the hub or a local copy)::

        model, tok = load_model_and_tokenizer("Qwen/Qwen3-0.6B", dtype="bfloat16")
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


def gguf_to_hf_folder(folder: str, gguf_file: str, out_dir: str) -> str:
    """Convert a GGUF checkpoint into an ordinary Hugging Face folder (float32) that every catto path and other
    tools (lm-eval, TRL) load by path. Returns `out_dir`; does nothing if it already holds a converted model.

    transformers de-quantises GGUF on load but refuses to `save_pretrained` such a model, so a fresh model is built
    from its config without the GGUF quantization entry and given the loaded weights.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if os.path.exists(os.path.join(out_dir, "config.json")):
        return out_dir
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    model.tie_weights()
    missing = [k for k in missing if not (config.tie_word_embeddings and k.endswith("lm_head.weight"))]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion of {gguf_file}: missing {missing[:5]}, unexpected {unexpected[:5]}.")
    tmp = out_dir.rstrip("/") + ".partial"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, out_dir)
    return out_dir
