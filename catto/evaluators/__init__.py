"""Post-hoc calibration evaluators behind one interface (`Evaluator`): fit on labelled items, evaluate to
`ItemResult`s, save/load as safetensors + JSON. See `catto.evaluators.base`."""

from __future__ import annotations

import importlib

from .base import (
    EVALUATORS,
    Evaluator,
    EvaluatorConfig,
    load_evaluator,
    register_evaluator,
)

# Modules that define built-in evaluators; each registers its classes on import. Add new methods here.
BUILTIN_MODULES: tuple[str, ...] = ("temperature", "msp", "coral", "secl")


def _import_all() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(f"{__name__}.{module}")


def get_evaluator_class(name: str) -> type[Evaluator]:
    """The registered evaluator class called `name` (clear error listing the known ones)."""
    _import_all()
    if name not in EVALUATORS:
        raise ValueError(f"Unknown evaluator {name!r}; known: {sorted(EVALUATORS)}.")
    return EVALUATORS[name]


__all__ = ["EVALUATORS", "Evaluator", "EvaluatorConfig", "get_evaluator_class", "load_evaluator",
           "register_evaluator"]
