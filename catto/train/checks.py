"""What `catto train` checks before any model is loaded: in the launching process (one process, seconds) and again
in the training script (so `python -m catto.train` and `accelerate launch -m catto.train` get the same answers).

- the model: its config is readable, a local folder has tokenizer files, QLoRA has bitsandbytes (>= 0.50 without a
  GPU: its CPU backend);
- the output folder: a finished run (a saved model and trainer_state.json) or checkpoints are never trained over
  unless `resume_from_checkpoint` continues them or `overwrite_output_dir` replaces them;
- the checkpoint to resume: it exists, and every file the Trainer reads (trainer state, weights, optimizer, scheduler)
  is complete, naming the damaged one;
- the settings: a resume with settings that change what is trained (another `catto_alpha`, loss, data, model, ...)
  stops and names them, since the Trainer would silently continue with the new ones.

Every failure is a `RecipeError` (a `catto.errors.ConfigError`) whose message names the field or file and the fix.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any

from ..errors import ConfigError, DataError, MissingFileError

SETTINGS_FILE = "catto_train_settings.json"
# CATTOConfig / DPOConfig fields that change what a run learns: a resume must keep them.
TRAINED_FIELDS = ("loss_type", "loss_weights", "beta", "learning_rate", "lr_scheduler_type", "weight_decay",
                  "optim", "per_device_train_batch_size", "gradient_accumulation_steps", "seed", "max_length",
                  "truncation_mode", "precompute_ref_log_probs", "label_smoothing", "use_weighting", "bf16",
                  "ld_alpha", "f_divergence_type", "f_alpha_divergence_coef", "discopop_tau", "sync_ref_model",
                  "ref_model_mixup_alpha", "ref_model_sync_steps", "router_aux_loss_coef", "disable_dropout",
                  "neftune_noise_alpha")
MODEL_FIELDS = ("model_name_or_path", "model_revision", "dtype", "use_peft", "lora_r", "lora_alpha", "lora_dropout",
                "lora_target_modules", "load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", "use_bnb_nested_quant")
DATA_FIELDS = ("dataset_name", "dataset_config", "dataset_train_split", "mcqa_data", "mcqa_train_split", "mcqa_limit",
               "mcqa_prompt_format", "mcqa_rejected", "mcqa_conversational", "mcqa_seed", "on_invalid")


# Names of the output projection in transformers' causal LMs (lm_head; embed_out in GPT-NeoX).
OUTPUT_HEAD_NAMES = ("lm_head", "embed_out")


class RecipeError(ConfigError):
    """A recipe or command line that cannot be run as written; the message names the key and the fix."""


def check_model(model_args) -> None:
    """Fail early, with the fix, when the model's config cannot be read, a local model folder has no tokenizer, or
    quantization cannot work here."""
    import torch
    from transformers import AutoConfig

    from ..core.modeling import TOKENIZER_FILES

    name = model_args.model_name_or_path
    path = os.path.expanduser(name)
    try:
        AutoConfig.from_pretrained(name, revision=model_args.model_revision)
    except (OSError, ValueError) as err:
        local = os.path.exists(path)
        fix = (f"{name!r} exists but holds no loadable config.json (is it a model folder saved with save_pretrained?)"
               if local else f"{name!r} is not a local folder, and the hub could not give its config (no network, a "
               "typo in the id, or a gated model: run `huggingface-cli login`)")
        raise RecipeError(f"model_name_or_path: cannot load {name!r}: {fix}. Original error: "
                          f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    if os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise RecipeError(f"model_name_or_path {name!r}: no tokenizer files ({', '.join(TOKENIZER_FILES)}) in the "
                          "folder. Fix: save the tokenizer next to the model (tokenizer.save_pretrained(folder)).")
    if model_args.load_in_4bit or model_args.load_in_8bit:
        import importlib.metadata
        import importlib.util

        from packaging.version import Version

        if importlib.util.find_spec("bitsandbytes") is None:
            raise RecipeError("load_in_4bit/load_in_8bit (QLoRA) need bitsandbytes: pip install 'catto[quantization]'.")
        version = importlib.metadata.version("bitsandbytes")
        if not torch.cuda.is_available() and Version(version) < Version("0.50"):
            raise RecipeError(f"load_in_4bit/load_in_8bit (QLoRA) without a CUDA GPU need bitsandbytes >= 0.50 (its "
                              f"CPU backend; tested with 0.50.2), found {version}. Fix: pip install "
                              "'bitsandbytes>=0.50', or train with LoRA (use_peft: true) and no quantization.")
        if not model_args.use_peft:
            raise RecipeError("A 4/8-bit model cannot be fully fine-tuned: set use_peft: true (QLoRA).")
    targets = model_args.lora_target_modules or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    head = next((t for t in targets if t in OUTPUT_HEAD_NAMES), None)
    if model_args.use_peft and head:
        # TRL 1.16 refuses it too, but only after loading the model, and with a traceback.
        raise RecipeError(f"lora_target_modules includes the LM head {head!r}: the fused LM-head pass (TRL's and "
                          "catto's) reads its weight without calling it, so a LoRA adapter on it would never train. "
                          f"Fix: drop {head!r} from lora_target_modules, or train the head itself with "
                          f"lora_modules_to_save: [{head}].")


# ----------------------------------------------------------------------------------------------------------------
# The output folder and the checkpoint to resume


def _has_model(folder: str) -> bool:
    names = ("adapter_config.json", "config.json")
    return any(os.path.exists(os.path.join(folder, n)) for n in names)


def checkpoints(folder: str) -> list[str]:
    """`checkpoint-N` folders in `folder`, oldest first."""
    found = [p for p in glob.glob(os.path.join(folder, "checkpoint-*")) if p.rsplit("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.rsplit("-", 1)[1]))


def resolve_resume(training_args) -> str | None:
    """The checkpoint folder `resume_from_checkpoint` names (`true`: the newest in output_dir), or None."""
    value = training_args.resume_from_checkpoint
    if value in (None, False, "", "false", "False", "none", "None"):
        return None
    if value in (True, "true", "True"):
        found = checkpoints(training_args.output_dir)
        if not found:
            raise RecipeError(f"resume_from_checkpoint: true, but output_dir {training_args.output_dir!r} holds no "
                              "checkpoint-N folder. Fix: drop resume_from_checkpoint, or point it at a checkpoint.")
        return found[-1]
    return str(value)


def check_output_dir(training_args, script_args) -> None:
    """Refuse to train over a finished run or its checkpoints unless resuming or told to overwrite."""
    out = training_args.output_dir
    if resolve_resume(training_args) is not None or script_args.overwrite_output_dir or not os.path.isdir(out):
        return
    finished = _has_model(out) and os.path.exists(os.path.join(out, "trainer_state.json"))
    found = checkpoints(out)
    if finished or found:
        what = "a finished run (a saved model and trainer_state.json)" if finished else f"checkpoints ({len(found)})"
        resume = f" --resume_from_checkpoint {found[-1]} to continue it," if found else ""
        raise RecipeError(f"output_dir {out!r} holds {what}; training would overwrite it. Fix:{resume} a new "
                          "--output_dir, or --overwrite_output_dir true to replace it.")


def clear_output_dir(out: str) -> list[str]:
    """With `overwrite_output_dir`: remove the old run's checkpoints and saved model files (other files stay)."""
    import shutil

    removed = []
    for path in checkpoints(out):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    for pattern in ("adapter_model.safetensors", "adapter_config.json", "model*.safetensors",
                    "model.safetensors.index.json", "config.json", "trainer_state.json", SETTINGS_FILE):
        for path in glob.glob(os.path.join(out, pattern)):
            os.remove(path)
            removed.append(path)
    return removed


def check_checkpoint(path: str) -> None:
    """Every file the Trainer reads to resume from `path` is there and readable; the message names a damaged one."""
    if not os.path.isdir(path):
        raise MissingFileError(f"resume_from_checkpoint {path!r}: no such folder. Fix: point it at a checkpoint-N "
                               "folder of an earlier run (or drop it).")
    state = os.path.join(path, "trainer_state.json")
    try:
        with open(state) as f:
            json.load(f)
    except FileNotFoundError:
        raise MissingFileError(f"{state}: missing; {path} is not a complete checkpoint. Fix: resume from an earlier "
                               "checkpoint, or start over in a new output_dir.") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{state} is damaged ({err.msg}); the checkpoint cannot be resumed. Fix: resume from an "
                        "earlier checkpoint, or start over in a new output_dir.") from None
    weights = [os.path.join(path, n) for n in ("adapter_model.safetensors", "model.safetensors")
               if os.path.exists(os.path.join(path, n))] + sorted(glob.glob(os.path.join(path, "model-*.safetensors")))
    if not weights and not glob.glob(os.path.join(path, "pytorch_model*.bin")) and not os.path.isdir(
            os.path.join(path, "pytorch_model_fsdp_0")) and not glob.glob(os.path.join(path, "global_step*")):
        raise MissingFileError(f"{path}: no model weights (adapter_model.safetensors / model.safetensors). Fix: resume "
                               "from an earlier checkpoint, or start over in a new output_dir.")
    from safetensors import SafetensorError, safe_open

    for file in weights:
        try:
            with safe_open(file, framework="pt") as f:
                for key in f.keys():
                    f.get_slice(key)  # reads the header and each tensor's extent: a truncated file fails here
        except (SafetensorError, OSError, RuntimeError) as err:
            raise DataError(f"{file} is damaged ({err}); the checkpoint cannot be resumed. Fix: resume from an "
                            "earlier checkpoint, or start over in a new output_dir.") from None
        if os.path.getsize(file) < _safetensors_extent(file):
            raise DataError(f"{file} is truncated; the checkpoint cannot be resumed. Fix: resume from an earlier "
                            "checkpoint, or start over in a new output_dir.")
    for name in ("optimizer.pt", "scheduler.pt"):
        file = os.path.join(path, name)
        if not os.path.exists(file):
            if name == "optimizer.pt" and glob.glob(os.path.join(path, "global_step*")):
                continue  # DeepSpeed keeps its optimizer state in global_step*/
            raise MissingFileError(f"{file}: missing; the Trainer needs it to resume. Fix: resume from an earlier "
                                   "checkpoint, or start over in a new output_dir.")
        _check_torch_file(file)


def _safetensors_extent(file: str) -> int:
    """The byte length a safetensors file must have: 8 + header + the largest tensor end offset."""
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return 8 + n + max(ends, default=0)


def _check_torch_file(file: str) -> None:
    """A `torch.save` file (a zip archive): a truncated one has no readable central directory."""
    import zipfile

    try:
        with zipfile.ZipFile(file) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{file} is damaged ({err}); the checkpoint cannot be resumed. Fix: resume from an earlier "
                        "checkpoint, or start over in a new output_dir.") from None
    if bad is not None:
        raise DataError(f"{file} is damaged (member {bad} fails its checksum). Fix: resume from an earlier checkpoint, "
                        "or start over in a new output_dir.")


# ----------------------------------------------------------------------------------------------------------------
# The settings a resume must keep


def trained_settings(script_args, training_args, model_args) -> dict[str, Any]:
    """The settings that change what a run learns (model, data, the DPO and CATTO objective, the optimiser)."""
    out: dict[str, Any] = {}
    for args, names in ((model_args, MODEL_FIELDS), (script_args, DATA_FIELDS), (training_args, TRAINED_FIELDS)):
        for name in names:
            if hasattr(args, name):
                out[name] = getattr(args, name)
    out.update({f.name: getattr(training_args, f.name) for f in dataclasses.fields(training_args)
                if f.name.startswith("catto_") and f.name not in ("catto_log_metrics", "catto_ece_bins")})
    return json.loads(json.dumps(out, default=str))


def recorded_settings(checkpoint: str) -> tuple[dict[str, Any] | None, str | None]:
    """`(settings, file)` a checkpoint was trained with: its own `catto_train_settings.json` (written into every
    checkpoint by `CheckpointSettingsCallback`, so a checkpoint copied away from its run keeps them), else its run
    folder's; `(None, None)` when neither exists. (The checkpoint's `training_args.bin` is a pickle: catto does not
    unpickle a file that may come from elsewhere.)"""
    for folder in (checkpoint, os.path.dirname(os.path.abspath(checkpoint))):
        record = os.path.join(folder, SETTINGS_FILE)
        if not os.path.exists(record):
            continue
        try:
            with open(record) as f:
                old = json.load(f)
        except json.JSONDecodeError as err:
            raise DataError(f"{record} is damaged ({err.msg}), so the settings of the checkpoint to resume are "
                            "unknown. Fix: restore it from the run, or start a new run in a new --output_dir.") from None
        if not isinstance(old, dict):
            raise DataError(f"{record} holds no settings (a {type(old).__name__}). Fix: restore it from the run, or "
                            "start a new run in a new --output_dir.")
        return old, record
    return None, None


def check_resume_settings(checkpoint: str, settings: dict[str, Any]) -> None:
    """Refuse to resume `checkpoint` with settings other than those it was trained with (`recorded_settings`); a
    checkpoint with no record (an older catto's, copied away from its run, or another trainer's) is resumed with a
    one-line warning that nothing could be compared."""
    old, record = recorded_settings(checkpoint)
    if old is None:
        from .._logging import get_logger

        get_logger(__name__).warning(
            f"resume_from_checkpoint {checkpoint!r}: neither the checkpoint nor its run folder holds {SETTINGS_FILE}, "
            "so catto cannot check that this resume keeps the run's settings (catto_alpha, loss, data, model, ...); "
            "make sure they are the run's own.")
        return
    # A key the record lacks was added to the recorded settings after that run started: nothing to compare it with.
    differ = sorted(k for k in set(old) | set(settings) if k in old and old.get(k) != settings.get(k))
    if differ:
        shown = ", ".join(f"{k} ({old.get(k)!r} there, {settings.get(k)!r} now)" for k in differ[:4])
        raise RecipeError(f"resume_from_checkpoint {checkpoint!r} was trained with other settings ({record}): "
                          f"{shown}. Fix: resume with the run's own settings, or start a new run in a new "
                          "--output_dir.")


def checkpoint_settings_callback(settings: dict[str, Any]):
    """A `TrainerCallback` writing `settings` as `catto_train_settings.json` into every checkpoint the Trainer saves."""
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    from ..io import write_json_atomic

    class CheckpointSettingsCallback(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            if state.is_world_process_zero and os.path.isdir(folder):
                write_json_atomic(os.path.join(folder, SETTINGS_FILE), settings)

    return CheckpointSettingsCallback()


def preflight(script_args, training_args, model_args) -> dict[str, Any]:
    """Every check `catto train` makes before loading the model; returns the settings to record."""
    check_model(model_args)
    check_output_dir(training_args, script_args)
    settings = trained_settings(script_args, training_args, model_args)
    checkpoint = resolve_resume(training_args)
    if checkpoint is not None:
        check_checkpoint(checkpoint)
        check_resume_settings(checkpoint, settings)
    return settings
