"""The one interface every post-hoc calibration method implements.

An evaluator turns a model + tokenizer + MCQA items into the shared per-item `ItemResult`s (option probabilities,
prediction, confidence, correctness, optional abstain flag), so `catto.metrics`, `catto.evaluation` and
`catto report` treat every method the same way.

- `fit(model, tokenizer, items)` learns from *labelled* items (a threshold, a temperature, a probe). Methods that
  learn nothing inherit the no-op.
- `evaluate(model, tokenizer, items)` returns one `ItemResult` per item, in the items' order.
- `save(folder)` writes the fitted state as `state.safetensors` (tensors) + `evaluator.json` (name, config, JSON
  state, catto version); `load_evaluator(folder)` rebuilds the evaluator from them. Never pickle: a saved
  evaluator is something users download from others.

Subclasses declare a `name`, a config dataclass (`config_class`, validated in its `__post_init__`) and, when they
learn something, override `state_tensors` / `state_json` / `load_state`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from ..data.items import MCQAItem
from ..results import ItemResult, write_json_atomic

EVALUATORS: dict[str, type[Evaluator]] = {}

STATE_TENSORS_FILE = "state.safetensors"
STATE_JSON_FILE = "evaluator.json"


def register_evaluator(cls: type[Evaluator]) -> type[Evaluator]:
    """Class decorator: make `cls` loadable by `load_evaluator` under `cls.name`."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} must set a class attribute `name` to be registered.")
    if cls.name in EVALUATORS and EVALUATORS[cls.name] is not cls:
        raise ValueError(f"An evaluator named {cls.name!r} is already registered ({EVALUATORS[cls.name].__name__}).")
    EVALUATORS[cls.name] = cls
    return cls


@dataclasses.dataclass
class EvaluatorConfig:
    """Base config: subclasses add their fields (each with `metadata={"help": ...}`) and validate them."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Evaluator(ABC):
    """Base class of catto's post-hoc evaluators. See the module docstring for the contract."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[EvaluatorConfig]] = EvaluatorConfig
    #: whether `fit` needs gold labels (False for label-free methods such as SECL)
    needs_labels: ClassVar[bool] = False

    def __init__(self, config: EvaluatorConfig | None = None, **kwargs: Any):
        if config is not None and kwargs:
            raise TypeError(f"{type(self).__name__}: pass either `config` or keyword fields, not both.")
        if config is None:
            config = self.config_class(**kwargs)
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} expects a {self.config_class.__name__}, got {type(config).__name__}.")
        self.config = config
        self.fitted = False

    # -- learning ------------------------------------------------------------------------------------------------
    def fit(self, model, tokenizer, items: Sequence[MCQAItem]) -> Evaluator:
        """Learn from labelled `items`; the default learns nothing. Returns `self`."""
        if self.needs_labels:
            missing = [it.id for it in items if it.gold is None]
            if missing:
                raise ValueError(f"{self.name}.fit needs gold labels; {len(missing)} item(s) have none, e.g. "
                                 f"{missing[:3]}. Fit on a labelled split.")
        self.fitted = True
        return self

    @abstractmethod
    def evaluate(self, model, tokenizer, items: Sequence[MCQAItem]) -> list[ItemResult]:
        """One `ItemResult` per item, in order."""

    def summarize(self, results: Sequence[ItemResult]) -> dict[str, Any]:
        """Method-specific corpus-level numbers (e.g. abstention scores) reported next to the shared metrics; the
        default has none. Only labelled results are passed."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What produced the numbers: method name, config and any fitted scalars. Recorded next to results."""
        return {"method": self.name, "config": self.config.to_dict(), "fitted": self.fitted, **self.state_json()}

    # -- fitted state --------------------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Fitted tensors to save (probe weights, feature statistics, ...)."""
        return {}

    def state_json(self) -> dict[str, Any]:
        """Fitted JSON-serialisable values to save (a threshold, a chosen layer, ...)."""
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Restore what `state_tensors` / `state_json` returned."""
        if tensors:
            raise ValueError(f"{self.name} has no tensor state, but the saved one holds {sorted(tensors)}.")

    def save(self, folder: str | os.PathLike) -> str:
        """Write `evaluator.json` and `state.safetensors` into `folder` (each file atomically). Returns `folder`."""
        from safetensors.torch import save_file

        from .. import __version__

        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_tensors().items()}
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".tmp-", suffix=".safetensors", delete=False) as f:
            tmp = f.name
        save_file(tensors, tmp, metadata={"catto_evaluator": self.name})
        os.replace(tmp, os.path.join(folder, STATE_TENSORS_FILE))
        write_json_atomic(os.path.join(folder, STATE_JSON_FILE), {
            "catto_version": __version__,
            "method": self.name,
            "config": self.config.to_dict(),
            "fitted": self.fitted,
            "state": self.state_json(),
        })
        return folder


def load_evaluator(folder: str | os.PathLike) -> Evaluator:
    """Rebuild a saved evaluator (any registered method) from `folder`."""
    from safetensors.torch import load_file

    from . import _import_all  # registers the built-in methods

    _import_all()
    folder = os.fspath(folder)
    meta_path = os.path.join(folder, STATE_JSON_FILE)
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{folder} holds no {STATE_JSON_FILE}; it is not a saved catto evaluator.")
    with open(meta_path) as f:
        meta = json.load(f)
    cls = EVALUATORS.get(meta.get("method"))
    if cls is None:
        raise ValueError(f"{meta_path}: unknown evaluator {meta.get('method')!r}; known: {sorted(EVALUATORS)}.")
    evaluator = cls(cls.config_class(**meta["config"]))
    tensors_path = os.path.join(folder, STATE_TENSORS_FILE)
    tensors = load_file(tensors_path) if os.path.exists(tensors_path) else {}
    evaluator.load_state(tensors, meta.get("state", {}))
    evaluator.fitted = bool(meta.get("fitted", False))
    return evaluator
