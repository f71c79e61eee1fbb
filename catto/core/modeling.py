"""Loading a causal LM and its tokenizer from a hub id, a local folder, a GGUF file or the output folder of a
`catto train` run (a full model, or a LoRA adapter on its base model), with errors that say what to do."""

from __future__ import annotations

import json
import os

import torch

from ..errors import ConfigError, ModelLoadError

# "auto": the checkpoint's own dtype (its config.json's `dtype`, else its weights'; float32 for a GGUF file), as
# transformers' `from_pretrained(dtype="auto")`.
DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# transformers' `from_pretrained(device_map=...)` strategies (accelerate spreads the layers over the devices).
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
# What `catto train` records in its output folder (catto.train.checks.SETTINGS_FILE; core may not import train).
TRAIN_SETTINGS_FILE = "catto_train_settings.json"


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` picks CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_device(device: str, flag: str = "--device") -> None:
    """A `ConfigError` naming `flag` when `device` is not a device name or this machine does not have it (before any
    model loads; torch would otherwise stop in `.to(device)` with its own traceback)."""
    if device == "auto":
        return
    try:
        wanted = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"{flag} {device!r} is not a device ({str(err).splitlines()[0]}). Fix: auto, cpu, cuda or "
                          "cuda:N.") from None
    kind = wanted.type
    if kind in ("cpu", "meta"):
        return
    module = getattr(torch, kind, None) if kind != "mps" else getattr(torch.backends, "mps", None)
    available = bool(module is not None and getattr(module, "is_available", lambda: False)())
    if not available:
        build = " (this torch is a CPU build)" if kind == "cuda" and torch.version.cuda is None else ""
        raise ConfigError(f"{flag} {device}: this machine has no {kind.upper()} device{build}. Fix: {flag} cpu, or "
                          f"{flag} auto (a GPU when there is one).")
    count = getattr(module, "device_count", lambda: 1)()
    if wanted.index is not None and wanted.index >= count:
        raise ConfigError(f"{flag} {device}: this machine has {count} {kind.upper()} device(s), numbered 0 to "
                          f"{count - 1}. Fix: pass one of them, or {flag} auto.")


def check_device_map(device_map: str | None, device: str = "auto") -> None:
    """`device_map` is one of `DEVICE_MAPS` or a device this machine has, and `--device` is not also given."""
    if device_map is None:
        return
    if device_map not in DEVICE_MAPS:
        if "{" in device_map or "=" in device_map:
            raise ConfigError(f"--device_map {device_map!r}: give a strategy ({', '.join(DEVICE_MAPS)}) or one "
                              "device. Fix: --device_map auto (a per-module map is for the Python API: "
                              "load_model_and_tokenizer(..., device_map={...})).")
        check_device(device_map, "--device_map")
    if device != "auto":
        raise ConfigError(f"--device {device} and --device_map {device_map} both say where the model goes. Fix: keep "
                          "one (--device_map places the model itself; --device moves it whole).")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def is_adapter_folder(path: str) -> bool:
    """A PEFT adapter folder (a LoRA run of `catto train` or one of its checkpoints): adapter_config.json, no
    config.json."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "adapter_config.json")) and not \
        os.path.isfile(os.path.join(path, "config.json"))


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _usable(name: str) -> bool:
    """A local folder that exists, or a name that is not a path (a hub id)."""
    if os.path.isdir(os.path.expanduser(name)):
        return True
    return not (name.startswith(("/", "./", "../", "~")) or os.path.exists(name))


def adapter_base_model(folder: str) -> str:
    """The base model of the adapter in `folder`: its adapter_config.json's `base_model_name_or_path`, else the model
    its `catto train` run recorded (`catto_train_settings.json` in the folder, or in the run folder above a
    checkpoint); the first of them that is a folder here or a hub id. A `ModelLoadError` naming them when none is."""
    candidates = []
    base = _read_json(os.path.join(folder, "adapter_config.json")).get("base_model_name_or_path")
    if base:
        candidates.append((base, "adapter_config.json's base_model_name_or_path"))
    for where in (folder, os.path.dirname(os.path.abspath(folder))):
        recorded = _read_json(os.path.join(where, TRAIN_SETTINGS_FILE)).get("model_name_or_path")
        if recorded and recorded not in [c for c, _ in candidates]:
            candidates.append((recorded, f"the run's {TRAIN_SETTINGS_FILE}"))
    for name, _ in candidates:
        if _usable(name):
            return name
    if not candidates:
        raise ModelLoadError(f"{folder}: a LoRA adapter that names no base model (no base_model_name_or_path in its "
                             f"adapter_config.json, no {TRAIN_SETTINGS_FILE}). Fix: pass --model BASE --adapter "
                             f"{folder}.")
    named = "; ".join(f"{name!r} ({source})" for name, source in candidates)
    raise ModelLoadError(f"{folder}: a LoRA adapter whose base model is not here: {named}. Fix: pass --model BASE "
                         f"--adapter {folder} with the base model's folder or hub id.")


def resolve_model(name_or_path: str, adapter: str | None = None) -> tuple[str, str | None]:
    """`(model, adapter)` to load for `--model NAME_OR_PATH [--adapter DIR]`: a LoRA run folder given as the model
    becomes its base model with the folder as the adapter; anything else is returned as it is."""
    if not is_adapter_folder(name_or_path):
        return name_or_path, adapter
    if adapter is not None:
        raise ConfigError(f"--model {name_or_path} is itself a LoRA adapter (a catto train run), and --adapter "
                          f"{adapter} is another. Fix: pass --model BASE --adapter {name_or_path}, or drop --adapter.")
    return adapter_base_model(name_or_path), name_or_path


def check_model_folder(path: str, gguf_file: str | None = None) -> None:
    """For a local folder: fail early, naming the file that is missing, before transformers gives a less direct
    error (a missing tokenizer surfaces as a sentencepiece or tiktoken complaint). A LoRA run folder is checked
    through its base model."""
    if gguf_file is None and is_adapter_folder(path):
        check_model_folder(adapter_base_model(path))
        return
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
        raise ModelLoadError(f"{path}: no config.json (nor adapter_config.json); it is not a model folder. Fix: pass "
                             "a folder written by save_pretrained or catto train (or a hub id).")
    if not any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES):
        raise ModelLoadError(f"{path}: no tokenizer files ({', '.join(TOKENIZER_FILES)}). Fix: save the tokenizer "
                             "into the folder too (tokenizer.save_pretrained(path)).")


def load_model_and_tokenizer(name_or_path: str, *, dtype: str = "auto", device: str = "auto",
                             gguf_file: str | None = None, trust_remote_code: bool = False,
                             adapter: str | None = None, device_map: str | dict | None = None):
    """`(model, tokenizer)` in eval mode on `device`; the tokenizer gets a pad token (EOS) if it has none.

    `name_or_path` is a hub id, a local folder, or the output folder of a `catto train` run: a full fine-tune is an
    ordinary model folder; a LoRA run (adapter_config.json, no config.json) loads its base model (the adapter
    config's `base_model_name_or_path`, else the model the run recorded) with the adapter on top, as
    `name_or_path=BASE, adapter=RUN` does. With `gguf_file` the weights come from that GGUF file inside the folder
    (transformers de-quantises it; needs the `gguf` package). `dtype` is `"auto"` (the checkpoint's own dtype,
    recorded in its config.json; float32 for a GGUF file) or float32, bfloat16, float16. `adapter` is a PEFT adapter
    folder put on top. `trust_remote_code` lets transformers run the model repository's own code. `device_map`
    (`"auto"`, `"balanced"`, ..., or a dict) is passed to `from_pretrained`, which spreads the model over the devices;
    the model is then left where it was put (`device` is not used). Any failure to load is a `ModelLoadError` (an
    `OSError`) naming the model and the usual fixes.

    Example (needs the hub or a local copy)::

        model, tok = load_model_and_tokenizer("Qwen/Qwen3-0.6B", dtype="bfloat16")
        model, tok = load_model_and_tokenizer("outputs/qwen3-catto-lora")  # a LoRA run of catto train
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ConfigError(f"`dtype` must be one of {list(DTYPES)}, got {dtype!r}.")
    if gguf_file is None:
        name_or_path, adapter = resolve_model(name_or_path, adapter)
    check_model_folder(name_or_path, gguf_file)
    kwargs = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    model_kwargs = {"dtype": DTYPES[dtype]}
    if device_map is not None:
        model_kwargs["device_map"] = device_map
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **model_kwargs, **kwargs)
    except Exception as err:  # transformers raises OSError, ValueError, HF hub errors, ...
        where = "local folder" if os.path.isdir(name_or_path) else "hub id or path"
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        remote = (" Its repository ships its own modelling code: pass --trust_remote_code if you trust it."
                  if "trust_remote_code" in str(err) and not trust_remote_code else "")
        raise ModelLoadError(
            f"Could not load model {name_or_path!r} ({where}{', GGUF file ' + gguf_file if gguf_file else ''}): "
            f"{type(err).__name__}: {first}.{remote} Fix: check the path or id, that the hub is reachable (or "
            "HF_HUB_OFFLINE is set with the files cached), and for GGUF files that `gguf` is installed."
        ) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if adapter is not None:
        from peft import PeftModel

        if not os.path.isfile(os.path.join(adapter, "adapter_config.json")):
            raise ModelLoadError(f"{adapter}: no adapter_config.json; it is not a PEFT adapter folder.")
        model = PeftModel.from_pretrained(model, adapter)
    if device_map is None:
        model.to(resolve_device(device))
    model.eval()
    return model, tokenizer


def load_trained_model(base: str | None, run_dir: str | None = None, **kwargs):
    """The model a `catto train` run produced: the run's own folder when it holds a full fine-tune (no
    adapter_config.json), else `base` with the run's LoRA adapter (`base=None`: the base model the adapter names);
    `base` itself when `run_dir` is None. `kwargs` go to `load_model_and_tokenizer` (`device`, `dtype`,
    `trust_remote_code`, `device_map`). `load_model_and_tokenizer(run_dir)` does the same with the recorded base."""
    if run_dir is None:
        return load_model_and_tokenizer(base, **kwargs)
    if not os.path.exists(os.path.join(run_dir, "adapter_config.json")):
        return load_model_and_tokenizer(run_dir, **kwargs)
    return load_model_and_tokenizer(base or adapter_base_model(run_dir), adapter=run_dir, **kwargs)


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
