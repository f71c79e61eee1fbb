"""`catto train`: check the recipe in this process, then run the training script under `accelerate launch`.

    catto train --config RECIPE.yaml [--accelerate_config NAME|PATH] [--num_processes N] [--main_process_port P]
                [--gpu_ids IDS] [--any_recipe_key VALUE ...]

runs `accelerate launch [--config_file CONFIG] [--num_processes N] -m catto.train --config RECIPE.yaml ...` and
prints that line, as `trl dpo` does for TRL's scripts. NAME is one of the accelerate configs shipped with catto
(`accelerate_configs/` in a checkout; the same files inside the installed package, read with `importlib.resources`
so that `pip install --user` and virtual environments find them too).
"""

from __future__ import annotations

import importlib.resources
import os
import sys
from pathlib import Path

from .script import RecipeError, make_parser, parse_args

LAUNCH_FLAGS = ("--accelerate_config", "--num_processes", "--main_process_port", "--gpu_ids")

TRAIN_USAGE = """usage: catto train --config RECIPE.yaml [--accelerate_config NAME|PATH] [--num_processes N]
                   [--main_process_port P] [--gpu_ids IDS] [--any_recipe_key VALUE ...]

Runs `accelerate launch [--config_file CONFIG] [--num_processes N] -m catto.train --config RECIPE.yaml ...`.
NAME is one of catto's accelerate_configs ({names}); the *_cpu ones rehearse a sharded launch on CPU processes
(zero2_cpu, zero3_cpu: with use_cpu false; fsdp2_cpu: with use_cpu true; see docs/distributed.md).
Flags after the recipe override its keys. Options of the training script:
"""


def packaged_folder(name: str) -> Path | None:
    """A data folder shipped with catto (`accelerate_configs`, `recipes`): the installed package's copy
    (`catto/<name>` in a wheel), else the checkout's top-level folder (an editable install or a source tree)."""
    resource = importlib.resources.files("catto").joinpath(name)
    if isinstance(resource, Path) and resource.is_dir():
        return resource
    checkout = Path(__file__).resolve().parents[2] / name
    return checkout if checkout.is_dir() else None


def accelerate_config_names() -> list[str]:
    folder = packaged_folder("accelerate_configs")
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder else []


def resolve_accelerate_config(value: str) -> str:
    """A path to an accelerate config: `value` itself if it is a file, else `NAME.yaml` from catto's configs."""
    if os.path.isfile(value):
        return value
    folder = packaged_folder("accelerate_configs")
    candidate = folder / f"{value.removesuffix('.yaml')}.yaml" if folder else None
    if candidate is not None and candidate.is_file():
        return str(candidate)
    raise RecipeError(f"--accelerate_config {value!r} is neither a file nor one of catto's configs "
                      f"{accelerate_config_names()}. Fix: pass a config path or one of those names.")


def split_launch_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate the launcher's flags (`LAUNCH_FLAGS`, each with a value) from the training script's arguments."""
    launch, script = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in LAUNCH_FLAGS:
            if not eq:
                if i + 1 >= len(argv):
                    raise RecipeError(f"{name} needs a value.")
                value = argv[i + 1]
                i += 1
            launch += [name, _checked_launch_value(name, value)]
        else:
            script.append(arg)
        i += 1
    return launch, script


def _checked_launch_value(name: str, value: str) -> str:
    """`--num_processes` >= 1 and `--main_process_port` a port number, checked here: accelerate would stop with a
    traceback (or hang waiting for processes that never start)."""
    limits = {"--num_processes": (1, None, "a whole number of processes >= 1"),
              "--main_process_port": (1, 65535, "a port number from 1 to 65535")}
    if name not in limits:
        return value
    low, high, what = limits[name]
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < low or (high is not None and number > high):
        example = 29500 if name == "--main_process_port" else 1
        raise RecipeError(f"{name} {value!r}: must be {what}. Fix: e.g. {name} {example}.")
    return value


def build_launch_command(argv: list[str]) -> list[str]:
    """The `accelerate launch ... -m catto.train ...` argv for `catto train ARGS`. Everything that can be checked
    without the model is checked first, here, in one process: the recipe and flags, the model's config and tokenizer,
    the output folder, the checkpoint to resume and its settings, and the data (every row validated)."""
    from .checks import preflight
    from .distributed import accelerate_config_env, check_launch
    from .script import load_calibration_items, load_preference_data

    from .script import check_output_writable

    launch, script = split_launch_args(argv)
    script_args, training_args, model_args = parse_args(script)
    preflight(script_args, training_args, model_args)
    check_output_writable(training_args.output_dir)
    load_preference_data(script_args, training_args)
    if script_args.calibration_eval_data:
        load_calibration_items(script_args)
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if "--accelerate_config" in launch:
        i = launch.index("--accelerate_config")
        path = resolve_accelerate_config(launch[i + 1])
        config = read_accelerate_config(path)
        check_launch(training_args, env={**os.environ, **accelerate_config_env(config)})  # the engine vs the recipe
        command += ["--config_file", path]
        # A DeepSpeed JSON named relative to the config (catto's zero3_cpu.yaml) is found next to it.
        ds_file = (config.get("deepspeed_config") or {}).get("deepspeed_config_file")
        beside = os.path.join(os.path.dirname(path), ds_file) if ds_file else None
        if ds_file and not os.path.isabs(ds_file) and not os.path.isfile(ds_file) and os.path.isfile(beside):
            command += ["--deepspeed_config_file", os.path.abspath(beside)]
        launch = launch[:i] + launch[i + 2:]
    return command + launch + ["-m", "catto.train", *script]


def read_accelerate_config(path: str) -> dict:
    """An accelerate config file as a dict (accelerate's own loader runs at launch)."""
    import yaml

    with open(path) as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict):
        raise RecipeError(f"--accelerate_config {path}: not a YAML mapping. Fix: see accelerate_configs/.")
    return config


def launch(argv: list[str]) -> int:
    """`catto train`: validate, then run the training script under `accelerate launch`; returns the exit status.

    A catto error inside the launched job (raised after the checks here, e.g. a data file that changed) ends the
    command with the job's own one-line message, not with the launcher's traceback: the job writes its message to a
    file this process names (`CATTO_ERROR_FILE`), and the traceback the launcher prints after a failed child is held
    back when that message exists.
    """
    import tempfile

    if not argv or argv[0] in ("-h", "--help"):
        print(TRAIN_USAGE.format(names=", ".join(accelerate_config_names())))
        make_parser().print_help()
        return 0
    command = build_launch_command(argv)
    print("[catto train] " + " ".join(command[1:]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        error_file = os.path.join(tmp, "error.txt")
        status = run_holding_back_tracebacks(command, {**os.environ, "CATTO_ERROR_FILE": error_file}, error_file)
        if status != 0 and os.path.exists(error_file):
            with open(error_file) as f:
                print(f.read().strip(), file=sys.stderr)
            return 2
    return status


def run_holding_back_tracebacks(command: list[str], env: dict, error_file: str) -> int:
    """Run `command`, copying its output through; once a line starts a traceback, the rest of stderr is held back
    and printed only if the job left no message in `error_file` (then the traceback is the only explanation)."""
    import subprocess
    import threading

    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, bufsize=1)
    held: list[str] = []

    def pump() -> None:
        holding = False
        for line in proc.stderr:
            holding = holding or line.startswith("Traceback (most recent call last)")
            if holding:
                held.append(line)
            else:
                sys.stderr.write(line)
                sys.stderr.flush()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    status = proc.wait()
    thread.join()
    if held and not (status != 0 and os.path.exists(error_file)):
        sys.stderr.write("".join(held))
    return status
