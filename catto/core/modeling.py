"""Loading a causal LM and its tokenizer from a hub id, a local folder or a GGUF file (with a trained adapter on top),
with errors that say what to do."""

from __future__ import annotations

import os

import torch

from ..errors import ConfigError, ModelLoadError

# "auto": the checkpoint's own dtype (its config.json's `dtype`, else its weights'; float32 for a GGUF file), as
# transformers' `from_pretrained(dtype="auto")`.
DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` picks CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def check_model_folder(path: str, gguf_file: str | None = None) -> None:
    """For a local folder: fail early, naming the file that is missing, before transformers gives a less direct
    error (a missing tokenizer surfaces as a sentencepiece or tiktoken complaint)."""
    if not os.path.isdir(path):
        if path.startswith(("/", "./", "../", "~")) or os.path.isfile(path):
            raise ModelLoadError(f"{path}: no such model folder. Fix: check the path (or pass a hub id).")
        return
    if gguf_file is not None:
        if not os.path.isfile(os.path.join(path, gguf_file)):
            raise ModelLoadError(f"{path}: no GGUF file {gguf_file!r} in it. Fix: pass the file's name inside the "
                                 "folder.")
        return
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelLoadError(f"{path}: no config.json; it is not a model folder. Fix: pass a folder written by "
                             "save_pretrained (or a hub id).")
    if not any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES):
        raise ModelLoadError(f"{path}: no tokenizer files ({', '.join(TOKENIZER_FILES)}). Fix: save the tokenizer "
                             "into the folder too (tokenizer.save_pretrained(path)).")


def load_model_and_tokenizer(name_or_path: str, *, dtype: str = "auto", device: str = "auto",
                             gguf_file: str | None = None, trust_remote_code: bool = False,
                             adapter: str | None = None):
    """`(model, tokenizer)` in eval mode on `device`; the tokenizer gets a pad token (EOS) if it has none.

    `name_or_path` is a hub id or a local folder; with `gguf_file` the weights come from that GGUF file inside the
    folder (transformers de-quantises it; needs the `gguf` package). `dtype` is `"auto"` (the checkpoint's own dtype,
    recorded in its config.json; float32 for a GGUF file) or float32, bfloat16, float16. `adapter` is a PEFT
    adapter folder put on top (a LoRA run of `catto train`). Any failure to load is a `ModelLoadError` (an
    `OSError`) naming the model and the usual fixes.

    Example (needs the hub or a local copy)::

        model, tok = load_model_and_tokenizer("Qwen/Qwen3-0.6B", dtype="bfloat16")
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ConfigError(f"`dtype` must be one of {list(DTYPES)}, got {dtype!r}.")
    check_model_folder(name_or_path, gguf_file)
    kwargs = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=DTYPES[dtype], **kwargs)
    except Exception as err:  # transformers raises OSError, ValueError, HF hub errors, ...
        where = "local folder" if os.path.isdir(name_or_path) else "hub id or path"
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ModelLoadError(
            f"Could not load model {name_or_path!r} ({where}{', GGUF file ' + gguf_file if gguf_file else ''}): "
            f"{type(err).__name__}: {first}. Fix: check the path or id, that the hub is reachable (or HF_HUB_OFFLINE "
            "is set with the files cached), and for GGUF files that `gguf` is installed."
        ) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if adapter is not None:
        from peft import PeftModel

        if not os.path.isfile(os.path.join(adapter, "adapter_config.json")):
            raise ModelLoadError(f"{adapter}: no adapter_config.json; it is not a PEFT adapter folder.")
        model = PeftModel.from_pretrained(model, adapter)
    model.to(resolve_device(device)).eval()
    return model, tokenizer


def load_trained_model(base: str, run_dir: str | None = None, *, device: str = "auto", dtype: str = "auto"):
    """The model a `catto train` run produced: `base` with the run's LoRA adapter, or the run's own folder when it
    holds a full fine-tune (no adapter_config.json); `base` itself when `run_dir` is None."""
    if run_dir is None:
        return load_model_and_tokenizer(base, device=device, dtype=dtype)
    if not os.path.exists(os.path.join(run_dir, "adapter_config.json")):
        return load_model_and_tokenizer(run_dir, device=device, dtype=dtype)
    return load_model_and_tokenizer(base, device=device, dtype=dtype, adapter=run_dir)


def gguf_to_hf_folder(folder: str, gguf_file: str, out_dir: str) -> str:
    """Convert a GGUF checkpoint into an ordinary Hugging Face folder (float32, recorded as its `dtype` in config.json,
    so `dtype="auto"` loads it in float32) that every catto path and other tools (lm-eval, TRL) load by path.
    Returns `out_dir`; does nothing if it already holds a converted model.

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
    model.config.dtype = torch.float32  # what `dtype="auto"` reads back: the de-quantised weights are float32
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    model.tie_weights()
    missing = [k for k in missing if not (config.tie_word_embeddings and k.endswith("lm_head.weight"))]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion of {gguf_file}: missing {missing[:5]}, unexpected {unexpected[:5]}.")
    from ..io import atomic_directory

    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir
