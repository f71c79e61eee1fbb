"""The recipes shipped with catto (`recipes/` in a checkout, `catto/recipes` in the installed package), and the
`catto train` arguments that run one of them on MCQA pairs: what `catto demo` and the studies in `benchmarks/` train.

Example:
    >>> recipe_path("demo/catto").endswith("catto.yaml")
    True
"""

from __future__ import annotations

from ..errors import SetupError
from .launcher import packaged_folder


def recipe_path(name: str) -> str:
    """The file of a shipped recipe, e.g. `demo/catto` or `qwen3-4b/catto-zero3`."""
    folder = packaged_folder("recipes")
    path = folder / f"{name.removesuffix('.yaml')}.yaml" if folder else None
    if path is None or not path.is_file():
        raise SetupError(f"recipes/{name}.yaml is not in this catto installation ({folder}). Fix: reinstall catto "
                         "(pip install -e . in a checkout).")
    return str(path)


def mcqa_recipe_argv(recipe: str, *, model: str, train_spec: str, out_dir: str, train_items: int, seed: int,
                     train_split: str | None = "train", steps: int | None = None, batch_size: int | None = None,
                     alpha: float | None = None, use_cpu: bool = True, checkpoint_every: int = 20,
                     extra: list[str] | None = None) -> list[str]:
    """`catto train` arguments: the recipe plus the overrides of a run on `train_spec`'s first `train_items` MCQA
    items (printed by callers, so the run can be repeated by hand)."""
    argv = ["--config", recipe_path(recipe), "--model_name_or_path", model, "--mcqa_data", train_spec,
            "--mcqa_limit", str(train_items), "--mcqa_on_invalid", "skip", "--output_dir", out_dir,
            "--seed", str(seed), "--calibration_eval_data", "none", "--disable_tqdm", "false",
            "--save_strategy", "steps", "--save_steps", str(checkpoint_every), "--save_total_limit", "1",
            "--mcqa_train_split", train_split or "none", "--use_cpu", "true" if use_cpu else "false"]
    if steps is not None:  # a log line at least every 5 steps, and one for very short runs
        argv += ["--max_steps", str(steps), "--logging_steps", str(max(1, min(5, steps)))]
    if batch_size is not None:
        argv += ["--per_device_train_batch_size", str(batch_size)]
    if alpha is not None:
        argv += ["--catto_alpha", str(alpha)]
    return argv + list(extra or [])
