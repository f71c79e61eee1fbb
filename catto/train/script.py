"""`catto train`: DPO or CATTO training from a recipe YAML, on one CPU or under `accelerate launch`.

Run the script directly (one process, or under any launcher)::

    accelerate launch --config_file accelerate_configs/zero3.yaml -m catto.train --config recipes/qwen3-4b/catto-zero3.yaml

or let `catto train` build that launch line, as `trl dpo` does for TRL's scripts::

    catto train --config recipes/demo/catto.yaml --accelerate_config multi_cpu --num_processes 2 --max_steps 10

Arguments are parsed by `trl.TrlParser` over `CATTOScriptArguments` (data and calibration-eval options),
`CATTOConfig` (every `DPOConfig` field plus the `catto_*` fields) and TRL's `ModelConfig` (model id or path,
dtype, LoRA/QLoRA). YAML keys set defaults; command-line flags override them; a key or flag that no dataclass has
is an error naming it (with the closest existing name). Everything that can be checked before training is checked
first (the data's columns, the model's config, quantization prerequisites), so a bad recipe fails in seconds, not
after the model is loaded on every GPU.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from trl import ScriptArguments

from ..errors import CattoError
from .._logging import get_logger
from .checks import (
    SETTINGS_FILE,
    RecipeError,
    checkpoint_settings_callback,
    clear_output_dir,
    preflight,
    resolve_resume,
)
from .config import CATTOConfig

logger = get_logger(__name__)


@dataclass
class CATTOScriptArguments(ScriptArguments):
    """Data and calibration-evaluation options of `catto train` (model options are TRL's `ModelConfig`).

    Extends `trl.ScriptArguments` (the `dataset_*` fields every TRL script takes) with MCQA data turned into pairs and
    the held-out calibration evaluation.
    """

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Preference dataset (prompt/chosen/rejected, or chosen/rejected with the prompt inside): a "
                          "hub id, a local folder saved with `save_to_disk`, or a .json/.jsonl/.csv/.parquet file. "
                          "Exactly one of `dataset_name` and `mcqa_data` must be set."})
    dataset_config: str | None = field(default=None, metadata={"help": "Config name of a hub `dataset_name`."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split of `dataset_name` to train on."})
    dataset_test_split: str | None = field(
        default=None,
        metadata={"help": "Split of `dataset_name` for the DPO eval loop (None: no DPO eval set, unless "
                          "`eval_strategy` is not 'no', then 'test')."})
    mcqa_data: str | None = field(
        default=None,
        metadata={"help": "MCQA data turned into preference pairs instead of `dataset_name`: a `catto.data.load_mcqa` "
                          "spec such as 'commonsense_qa', 'arc_easy', 'race:path/dev.jsonl' or "
                          "'generic:file.jsonl'. Chosen = the gold option, rejected = a wrong one."})
    mcqa_train_split: str = field(default="train", metadata={"help": "Split of `mcqa_data` to build pairs from."})
    mcqa_eval_split: str | None = field(
        default=None, metadata={"help": "Split of `mcqa_data` whose pairs are the DPO eval set (None: none)."})
    mcqa_limit: int | None = field(default=None, metadata={"help": "Use only the first N items of `mcqa_data`."})
    mcqa_prompt_format: str = field(
        default="cloze",
        metadata={"help": "Pair format: 'cloze' (the answers are option texts), 'letter' (the answers are option "
                          "letters after a lettered list) or 'options' (the options listed in the prompt, the answers "
                          "are option texts: the format Confidence@k samples answer text in)."})
    mcqa_rejected: str = field(
        default="random", metadata={"help": "'random' (one wrong option per item) or 'all' (one pair per wrong option)."})
    mcqa_conversational: bool = field(
        default=False, metadata={"help": "Build chat-message pairs (for instruct models with a chat template)."})
    on_invalid: str = field(
        default="skip",
        metadata={"help": "Rows that fail validation (a preference pair with an empty or mistyped completion or no "
                          "prompt to find; an MCQA item without a gold label or with duplicate options, ...): 'skip' "
                          "them with a warning that counts them and gives the first reason, or 'raise' on the first."})
    mcqa_on_invalid: str | None = field(
        default=None, metadata={"help": "Overrides `on_invalid` for MCQA rows (None: `on_invalid`)."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into an output_dir that holds a finished run or checkpoints, replacing them (without "
                          "it such a folder is refused: resume it or pick a new one)."})
    mcqa_seed: int = field(default=0, metadata={"help": "Seed of the rejected-option draw and option shuffles."})
    calibration_eval_data: str | None = field(
        default=None,
        metadata={"help": "Held-out MCQA data (a `load_mcqa` spec) scored during training; logs "
                          "eval_calibration/{accuracy,ece,brier,nll,auroc,confidence} (None: off)."})
    calibration_eval_split: str | None = field(
        default=None, metadata={"help": "Split of `calibration_eval_data` (None: the data set's evaluation split)."})
    calibration_eval_limit: int = field(
        default=200, metadata={"help": "Score the first N items of `calibration_eval_data` (keeps it cheap)."})
    calibration_eval_scoring: str = field(
        default="letter", metadata={"help": "'letter' or 'cloze' scoring, as in `catto eval --scoring`."})
    calibration_eval_chat_template: bool = field(
        default=False, metadata={"help": "Wrap letter prompts in the chat template, as `catto eval --chat-template`."})
    calibration_eval_steps: int | None = field(
        default=None, metadata={"help": "Score every N optimizer steps (None: `eval_steps`, else `logging_steps`)."})
    calibration_eval_at_start: bool = field(
        default=True, metadata={"help": "Also score before the first step (the curves then start at the base model)."})
    calibration_eval_batch_size: int = field(default=16, metadata={
        "help": "Items (letter) or option sequences (cloze) per scoring forward pass, as `catto eval "
                "--eval_batch_size`."})
    calibration_eval_n_bins: int = field(default=15, metadata={"help": "ECE bins of the calibration eval, as `catto "
                                                                      "eval --n_bins`."})
    calibration_eval_binning: str = field(
        default="equal_width", metadata={"help": "'equal_width' or 'equal_mass' ECE bins."})

    def __post_init__(self) -> None:
        # A recipe value can be unset from the command line with `--KEY none` (argparse gives strings).
        for name in ("dataset_name", "dataset_config", "dataset_test_split", "mcqa_data", "mcqa_eval_split",
                     "calibration_eval_data", "calibration_eval_split"):
            if isinstance(getattr(self, name), str) and getattr(self, name).strip().lower() in ("none", "null", ""):
                setattr(self, name, None)
        if self.dataset_streaming:
            raise RecipeError("dataset_streaming: catto train reads the whole preference dataset (it checks every row "
                              "before training). Fix: set dataset_streaming: false.")
        if (self.dataset_name is None) == (self.mcqa_data is None):
            raise RecipeError("Set exactly one of `dataset_name` (a preference dataset) and `mcqa_data` (MCQA items "
                              f"turned into pairs); got dataset_name={self.dataset_name!r}, "
                              f"mcqa_data={self.mcqa_data!r}.")
        if self.mcqa_on_invalid is None:
            self.mcqa_on_invalid = self.on_invalid
        choices = {"mcqa_prompt_format": ("cloze", "letter", "options"), "on_invalid": ("skip", "raise"),
                   "mcqa_on_invalid": ("skip", "raise"), "mcqa_rejected": ("random", "all"),
                   "calibration_eval_scoring": ("letter", "cloze"),
                   "calibration_eval_binning": ("equal_width", "equal_mass")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise RecipeError(f"`{name}` must be one of {list(allowed)}, got {getattr(self, name)!r}.")
        for name in ("mcqa_limit", "calibration_eval_limit", "calibration_eval_steps", "calibration_eval_batch_size",
                     "calibration_eval_n_bins"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise RecipeError(f"`{name}` must be a positive integer, got {value}.")


# ----------------------------------------------------------------------------------------------------------------
# Parsing


def model_config_class():
    """TRL's `ModelConfig` with `dtype` defaulting to `auto` (the checkpoint's own dtype), as `catto eval` loads models;
    TRL's default is float32. Every shipped recipe sets `dtype` itself."""
    from trl import ModelConfig

    @dataclass
    class CATTOModelConfig(ModelConfig):
        dtype: str | None = field(default="auto", metadata={
            "help": "Load the model under this dtype; `auto` (default, as in `catto eval`) keeps the checkpoint's own.",
            "choices": ["auto", "bfloat16", "float16", "float32"]})

    return CATTOModelConfig


def make_parser(prog: str | None = "catto train"):
    """The `TrlParser` over (`CATTOScriptArguments`, `CATTOConfig`, TRL's `ModelConfig` with dtype `auto`)."""
    from trl import TrlParser

    return TrlParser((CATTOScriptArguments, CATTOConfig, model_config_class()), prog=prog)


def _known_keys(parser) -> set[str]:
    return {action.dest for action in parser._actions}


def _unknown_key_error(key: str, known: set[str], where: str) -> RecipeError:
    close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return RecipeError(f"{where}: {key!r} is not a catto train option.{hint} Fix: remove or rename it; "
                       "`catto train --help` lists every option.")


def _read_recipe(path: str) -> dict[str, Any]:
    import yaml

    if not os.path.isfile(path):
        raise RecipeError(f"--config {path!r}: no such file. Fix: pass the path of a recipe YAML (see recipes/).")
    with open(path) as f:
        try:
            recipe = yaml.safe_load(f)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            what = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise RecipeError(f"recipe {path}:{where}: not valid YAML ({what}). Fix: one `key: value` per line (quote "
                              "values holding ': ' or '#').") from None
    if not isinstance(recipe, dict):
        raise RecipeError(f"{path}: a recipe must be a YAML mapping of option: value, got {type(recipe).__name__}.")
    return recipe


def check_recipe_keys(path: str, parser=None) -> dict[str, Any]:
    """Read the recipe at `path` and fail on any key no dataclass has (naming it and the closest option)."""
    parser = parser or make_parser()
    recipe = _read_recipe(path)
    known = _known_keys(parser) | {"env"}
    for key in recipe:
        if key not in known:
            raise _unknown_key_error(key, known, f"recipe {path}")
    return recipe


def parse_args(argv: list[str] | None = None):
    """Parse `--config recipe.yaml` plus overrides into (script_args, training_args, model_args).

    Unknown YAML keys and unknown flags raise `RecipeError` naming them; `catto_alpha < 0` and the other field checks
    raise from the dataclasses' `__post_init__`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise RecipeError("--config needs a value: the path of a recipe YAML.")
        check_recipe_keys(argv[index + 1], parser)
    try:
        script_args, training_args, model_args, remaining = parser.parse_args_and_config(
            argv, return_remaining_strings=True)
    except SystemExit as err:  # argparse's own errors (bad value types) already printed their message
        raise RecipeError(f"could not parse the arguments {argv} (see the message above).") from err
    except CattoError:
        raise
    except ValueError as err:  # transformers' / TRL's own checks of the values (e.g. bf16 without a GPU)
        first = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else type(err).__name__
        hint = (" On a CPU: pass --use_cpu true --bf16 false." if "bf16" in first or "fp16" in first else "")
        raise RecipeError(f"the recipe's training arguments were refused: {first}.{hint} Fix: change that value in "
                          "the recipe or on the command line.") from err
    flags = [s for s in remaining if s.startswith("--")]
    if flags or remaining:
        known = _known_keys(parser)
        raise _unknown_key_error((flags or remaining)[0].lstrip("-").split("=")[0], known, "command line")
    if model_args.model_name_or_path is None:
        raise RecipeError("`model_name_or_path` is not set. Fix: add `model_name_or_path: <hub id or local folder>` "
                          "to the recipe or pass --model_name_or_path.")
    return script_args, training_args, model_args


# ----------------------------------------------------------------------------------------------------------------
# Checks that run before anything heavy


def _checked_pairs(script_args, split: str):
    """A split of `dataset_name`, its columns checked and its rows validated (invalid ones skipped or raised)."""
    from ..data.preference import check_preference_columns, load_preference_dataset, validate_preference_rows

    where = f"dataset_name {script_args.dataset_name!r} (split {split!r})"
    dataset = load_preference_dataset(script_args.dataset_name, split, script_args.dataset_config)
    check_preference_columns(dataset, where)
    dataset, skipped = validate_preference_rows(dataset, where, script_args.on_invalid)
    if skipped:
        logger.warning(f"{where}: skipped {len(skipped)} invalid row(s) of {len(dataset) + len(skipped)}; row "
                       f"{skipped[0]['row']}: {skipped[0]['reason']}")
    return dataset


def load_preference_data(script_args, training_args):
    """(train, eval or None) preference datasets from `dataset_name` or from `mcqa_data` pairs."""
    if script_args.mcqa_data is not None:
        from ..data import load_mcqa, mcqa_to_preference

        def pairs(split):
            items = load_mcqa(script_args.mcqa_data, split=split, limit=script_args.mcqa_limit,
                              seed=script_args.mcqa_seed, on_invalid=script_args.mcqa_on_invalid)
            skipped = getattr(items, "skipped", [])
            where = f"mcqa_data {script_args.mcqa_data!r} (split {split!r})"
            if not items:
                reason = f"; e.g. {skipped[0].reason}" if skipped else ""
                raise RecipeError(f"{where} has no valid items ({len(skipped)} row(s) skipped{reason}).")
            if skipped:
                logger.warning(f"{where}: skipped {len(skipped)} invalid row(s) of {len(items) + len(skipped)}, "
                               f"e.g. {skipped[0].reason}")
            return mcqa_to_preference(items, prompt_format=script_args.mcqa_prompt_format,
                                      rejected=script_args.mcqa_rejected,
                                      conversational=script_args.mcqa_conversational, seed=script_args.mcqa_seed)

        train = pairs(script_args.mcqa_train_split)
        evaluation = pairs(script_args.mcqa_eval_split) if script_args.mcqa_eval_split else None
    else:
        train = _checked_pairs(script_args, script_args.dataset_train_split)
        test_split = script_args.dataset_test_split
        if test_split is None and training_args.eval_strategy != "no":
            test_split = "test"
        evaluation = _checked_pairs(script_args, test_split) if test_split else None
    if training_args.eval_strategy != "no" and evaluation is None:
        raise RecipeError(f"eval_strategy is {training_args.eval_strategy!r} but there is no DPO eval set. Fix: set "
                          "dataset_test_split (or mcqa_eval_split), or eval_strategy: 'no' (the calibration eval "
                          "callback runs without it).")
    return train, evaluation


def check_output_writable(output_dir: str) -> None:
    """Create `output_dir` and write a file there, before any model loads: an unwritable folder is one line naming
    it, not a traceback from the training job (and the launcher's CalledProcessError)."""
    from ..io import check_writable

    try:
        check_writable(output_dir)
    except OSError as err:
        raise RecipeError(f"output_dir {output_dir!r} cannot be written ({err.strerror or err}). Fix: pass an "
                          "--output_dir you can write to.") from None


def load_calibration_items(script_args):
    from ..data import load_mcqa

    items = load_mcqa(script_args.calibration_eval_data, split=script_args.calibration_eval_split,
                      limit=script_args.calibration_eval_limit, seed=script_args.mcqa_seed, on_invalid="skip")
    if len(items) == 0:
        raise RecipeError(f"calibration_eval_data {script_args.calibration_eval_data!r} gave no valid items.")
    return list(items)


# ----------------------------------------------------------------------------------------------------------------
# The job


def main(script_args, training_args, model_args) -> Any:
    """Train with `CATTODPOTrainer` (a DPO baseline is the same recipe with `catto_alpha: 0`); returns the trainer."""
    from trl import get_peft_config, get_quantization_config

    from ..eval.scoring import ScoringConfig
    from .callbacks import CalibrationEvalCallback
    from .trainer import CATTODPOTrainer

    settings = preflight(script_args, training_args, model_args)
    check_output_writable(training_args.output_dir)
    train, evaluation = load_preference_data(script_args, training_args)
    calibration_items = load_calibration_items(script_args) if script_args.calibration_eval_data else None

    model_init_kwargs = {"revision": model_args.model_revision, "attn_implementation": model_args.attn_implementation,
                         "dtype": model_args.dtype}
    model_init_kwargs = {k: v for k, v in model_init_kwargs.items() if v is not None}
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs

    trainer = CATTODPOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    trainer.model_card_dataset_name = script_args.dataset_name or script_args.mcqa_data  # named in README.md
    trainer.add_callback(checkpoint_settings_callback(settings))  # a checkpoint copied away keeps its settings
    if calibration_items is not None:
        CalibrationEvalCallback(
            calibration_items, trainer.processing_class,
            scoring=ScoringConfig(script_args.calibration_eval_scoring,
                                  chat_template=script_args.calibration_eval_chat_template),
            eval_steps=script_args.calibration_eval_steps, at_start=script_args.calibration_eval_at_start,
            batch_size=script_args.calibration_eval_batch_size, n_bins=script_args.calibration_eval_n_bins,
            binning=script_args.calibration_eval_binning,
        ).attach(trainer)
    from .distributed import check_engine

    trainer.accelerator.print(f"[catto train] {check_engine(trainer.accelerator)}")  # fails on a silent DDP fallback
    out = training_args.output_dir
    if trainer.accelerator.is_main_process:
        if script_args.overwrite_output_dir and resolve_resume(training_args) is None:
            removed = clear_output_dir(out)
            if removed:
                logger.warning(f"overwrite_output_dir: removed {len(removed)} file(s) of the earlier run in {out}")
        from ..io import write_json_atomic

        write_json_atomic(os.path.join(out, SETTINGS_FILE), settings)
    trainer.accelerator.wait_for_everyone()
    trainer.train(resume_from_checkpoint=resolve_resume(training_args))
    trainer.save_model(training_args.output_dir)  # and the model card (README.md): settings and final metrics
    trainer.save_state()  # trainer_state.json: the full log history, for plots and for comparing runs
    trainer.accelerator.print(f"[catto train] saved the model, its card (README.md) and trainer_state.json to "
                              f"{training_args.output_dir}")
    return trainer


def _error(err: Exception) -> None:
    """One line on stderr, from the main process only (every rank hits the same check under a launcher); under
    `catto train` also into the file it named, so its message is the command's last word."""
    if os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) in ("0", ""):
        message = f"catto train: {err}"
        print(message, file=sys.stderr, flush=True)
        if os.environ.get("CATTO_ERROR_FILE"):
            with open(os.environ["CATTO_ERROR_FILE"], "w") as f:
                f.write(message)


def run(argv: list[str] | None = None) -> int:
    """Script entry point (`python -m catto.train` / `accelerate launch -m catto.train`)."""
    from .distributed import check_launch, prepare_cpu_rehearsal

    argv = list(sys.argv[1:] if argv is None else argv)
    # Before any training argument: a DeepSpeed or FSDP2 rehearsal on CPU processes (catto.train.distributed).
    if prepare_cpu_rehearsal() == "deepspeed" and not any(a.split("=")[0] == "--ddp_backend" for a in argv):
        argv += ["--ddp_backend", "gloo"]  # with no named backend accelerate counts 1 process, DeepSpeed 2
    try:
        script_args, training_args, model_args = parse_args(argv)
        check_launch(training_args)
    except (CattoError, ValueError) as err:  # ValueError: a TrainingArguments / DPOConfig field check
        _error(err)
        return 2
    try:
        trainer = main(script_args, training_args, model_args)
    except CattoError as err:
        _error(err)
        return 2
    distributed_cpu = trainer.accelerator.num_processes > 1 and trainer.accelerator.device.type == "cpu"
    trainer.end()  # finishes the trackers and destroys the process group (needed under torchrun, transformers>=5.18)
    if distributed_cpu:
        # Leave before `trainer` is freed: destroying the DDP reducer can deadlock in PyTorch's gloo backend (seen with
        # torch 2.13 on CPU, at random). Everything was saved above.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(run())
