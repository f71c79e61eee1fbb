"""The one interface every evaluation method implements, and the registry that finds methods by name.

A method (an `Evaluator`) turns a model + tokenizer + items into per-item records. For the MCQA methods the record is
the shared `catto.eval.results.ItemResult` (option probabilities, prediction, confidence, correctness, optional
abstain flag), so `catto.eval.metrics`, `catto.eval.aggregate` and `catto report` treat every method the same way;
a method with richer records (Confidence@k's candidates, the token method's per-token statistics) says how they map
to `ItemResult`s, if at all (`item_results`), and reports its own numbers (`summarize`).

- `fit(model, tokenizer, items)` learns from *labelled* items (a threshold, a temperature, a probe). Methods that
  learn nothing inherit the no-op.
- `evaluate(model, tokenizer, items)` returns one record per item, in the items' order. A `resumable` method also
  takes `results_path=` and appends each batch there, skipping what the file already holds.
- `save(folder)` writes the fitted state as `state.safetensors` (tensors) + `evaluator.json` (name, config, JSON
  state, catto version); `load_evaluator(folder)` rebuilds the evaluator from them. Never pickle: a saved
  evaluator is something users download from others.

Subclasses declare a `name`, a config dataclass (`config_class`, every field with `metadata["help"]`, validated in
`__post_init__`; `catto eval` turns the fields into flags) and register with `@register_method`. Methods that learn
override `state_tensors` / `state_json` / `load_state`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from ..data.items import MCQAItem
from ..errors import ConfigError
from ..eval.results import ItemResult
from ..eval.scoring import (
    CLOZE_NORMALIZATIONS,
    SCORING_MODES,
    ScoringConfig,
    score_items,
)
from ..io import atomic_write, write_json_atomic

METHODS: dict[str, type[Evaluator]] = {}

STATE_TENSORS_FILE = "state.safetensors"
# The shared metrics `catto report` puts side by side (`Evaluator.report_columns`).
REPORT_COLUMNS = ("accuracy", "ece", "brier", "nll", "auroc", "aurc")
STATE_JSON_FILE = "evaluator.json"


def register_method(cls: type[Evaluator]) -> type[Evaluator]:
    """Class decorator: make `cls` available by `cls.name` (to `catto eval --method`, `catto report --methods` and
    `load_evaluator`)."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} must set a class attribute `name` to be registered.")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"A method named {cls.name!r} is already registered ({METHODS[cls.name].__name__}).")
    METHODS[cls.name] = cls
    return cls


BUILTIN_METHODS: dict[str, str] = {
    "scoring": "catto.methods.scoring",
    "temperature": "catto.methods.temperature",
    "msp": "catto.methods.msp",
    "coral": "catto.methods.coral",
    "secl": "catto.methods.secl",
    "confidence_at_k": "catto.methods.confidence_at_k",
    "token": "catto.methods.token",
}


def method_names() -> list[str]:
    """The built-in methods, then any other registered ones."""
    return [*BUILTIN_METHODS, *sorted(set(METHODS) - set(BUILTIN_METHODS))]


def get_method_class(name: str) -> type[Evaluator]:
    """The method class registered as `name` (a `ConfigError` listing the known ones otherwise)."""
    if name not in METHODS and name in BUILTIN_METHODS:
        importlib.import_module(BUILTIN_METHODS[name])
    if name not in METHODS:
        raise ConfigError(f"Unknown method {name!r}. Fix: use one of {method_names()}.")
    return METHODS[name]


#: The command-line spelling of a method config's `batch_size` field (the evaluation batch: items, option sequences
#: or sequences per forward): `catto eval` / `catto report --eval_batch_size`, the name `catto demo` uses for the same
#: batch (`--batch_size` is ambiguous next to `catto train`'s `--per_device_train_batch_size`). `--batch_size` /
#: `--batch-size` still work for one release, with a deprecation line. The field itself keeps the name `batch_size`
#: (the Python API of every method, saved evaluators and the settings.json a resumed run is compared with).
EVAL_BATCH_SIZE_FLAG = {"flag": "eval_batch_size", "deprecated_aliases": ["--batch_size", "--batch-size"]}


@dataclasses.dataclass
class EvaluatorConfig:
    """Base config: subclasses add their fields (each with `metadata={"help": ...}`) and validate them."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ScoringFields(EvaluatorConfig):
    """Scoring-layer options shared by the methods that start from `catto.eval.scoring` option probabilities (their
    names match `catto eval`'s options, so one flag sets them for every method of a run)."""

    scoring: str = dataclasses.field(default="letter", metadata={
        "help": "Option probabilities from letter scoring (softmax over the option letters) or cloze scoring "
                "(option-text log-likelihoods).", "choices": list(SCORING_MODES)})
    cloze_normalization: str = dataclasses.field(default="char", metadata={
        "help": "Cloze log-likelihood normalisation (sum, token, char = lm-eval acc_norm).",
        "choices": list(CLOZE_NORMALIZATIONS)})
    chat_template: bool = dataclasses.field(default=False, metadata={"help": "Wrap letter prompts in the chat "
                                                                               "template."})
    batch_size: int = dataclasses.field(default=16, metadata={"help": "Items (letter) or option sequences (cloze) "
                                                                      "per forward.", **EVAL_BATCH_SIZE_FLAG})

    def __post_init__(self) -> None:
        if self.scoring not in SCORING_MODES:
            raise ConfigError(f"`scoring` must be one of {list(SCORING_MODES)}, got {self.scoring!r}.")
        if self.cloze_normalization not in CLOZE_NORMALIZATIONS:
            raise ConfigError(f"`cloze_normalization` must be one of {list(CLOZE_NORMALIZATIONS)}, got "
                              f"{self.cloze_normalization!r}.")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"`batch_size` (--eval_batch_size) must be an integer >= 1, got {self.batch_size!r}.")

    def scoring_config(self, num_fewshot: int = 0) -> ScoringConfig:
        return ScoringConfig(self.scoring, cloze_normalization=self.cloze_normalization,
                             chat_template=self.chat_template, num_fewshot=num_fewshot)

    def score(self, model, tokenizer, items: Sequence[MCQAItem], *, fewshot: Sequence[MCQAItem] = (),
              results_path: str | os.PathLike | None = None, progress: bool = False) -> list[ItemResult]:
        """The scoring layer's uncalibrated results for `items` (resumable through `results_path`)."""
        return score_items(model, tokenizer, items, config=self.scoring_config(len(fewshot)), fewshot=fewshot,
                           batch_size=self.batch_size, results_path=results_path, progress=progress)


class Evaluator(ABC):
    """Base class of catto's evaluation methods. See the module docstring for the contract."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[EvaluatorConfig]] = EvaluatorConfig
    #: whether `fit` needs gold labels (False for label-free methods such as SECL)
    needs_labels: ClassVar[bool] = False
    #: the per-item record `evaluate` returns (a class with `id`, `to_json()` and `from_dict()`)
    record_type: ClassVar[type] = ItemResult
    #: whether `evaluate` takes `results_path=` (append each batch, skip the items the file holds)
    resumable: ClassVar[bool] = False
    #: whether `evaluate` also takes preference rows (`prompt`/`chosen`/`rejected` dicts), not only MCQA items
    accepts_pairs: ClassVar[bool] = False
    #: whether the runner gives it demonstrations (`--num-fewshot`) through `fewshot`
    uses_fewshot: ClassVar[bool] = False
    #: the shared metric columns (`catto.eval.aggregate.summarize_results` keys) that this method's per-item answers
    #: fill in `catto report`'s table; a method without per-question answers (token) fills none and is reported by
    #: its own table (`format_summary`)
    report_columns: ClassVar[tuple[str, ...]] = REPORT_COLUMNS

    def __init__(self, config: EvaluatorConfig | None = None, **kwargs: Any):
        if config is not None and kwargs:
            raise TypeError(f"{type(self).__name__}: pass either `config` or keyword fields, not both.")
        if config is None:
            config = self.config_class(**kwargs)
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} expects a {self.config_class.__name__}, got {type(config).__name__}.")
        self.config = config
        self.fitted = False
        #: progress bars on long loops (the runner sets it from `--no-progress`)
        self.progress = True
        #: k-shot demonstrations for methods that use them (`uses_fewshot`)
        self.fewshot: Sequence[MCQAItem] = ()
        #: binning and bootstrap for `summarize` (the runner sets them from --n-bins/--binning/--bootstrap/--seed)
        self.metric_options: dict[str, Any] = {"n_bins": 15, "binning": "equal_width", "n_resamples": 1000, "seed": 0}

    # -- learning ------------------------------------------------------------------------------------------------
    def fit(self, model, tokenizer, items: Sequence[MCQAItem]) -> Evaluator:
        """Learn from labelled `items`; the default learns nothing. Returns `self`."""
        if self.needs_labels:
            missing = [it.id for it in items if it.gold is None]
            if missing:
                raise ConfigError(f"{self.name}.fit needs gold labels; {len(missing)} item(s) have none, e.g. "
                                  f"{missing[:3]}. Fit on a labelled split.")
        self.fitted = True
        return self

    @abstractmethod
    def evaluate(self, model, tokenizer, items: Sequence[MCQAItem]) -> list:
        """One record per item, in order."""

    # -- reading the records -------------------------------------------------------------------------------------
    def item_results(self, records: Sequence[Any]) -> list[ItemResult] | None:
        """The records as the shared MCQA `ItemResult`s (accuracy, ECE, ... tables), or None when the method's
        records are not per-question answers (the token method)."""
        if self.record_type is ItemResult:
            return list(records)
        return None

    def summarize(self, records: Sequence[Any]) -> dict[str, Any]:
        """Method-specific corpus-level numbers (e.g. abstention scores) reported next to the shared metrics; the
        default has none. Only labelled records are passed."""
        return {}

    @classmethod
    def format_summary(cls, method_metrics: Mapping[str, Any]) -> str:
        """The method's own numbers (what `summarize` returned) as a short Markdown table, printed by `catto eval`
        and added to `catto report`; the default has none (empty string)."""
        return ""

    @classmethod
    def report_config(cls, shared: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
        """The config values this method takes from `catto report`'s shared options, before the user's `--set`
        `overrides` are applied. `shared` holds the shared options whose names are fields of `config_class`; the
        default takes them all."""
        return dict(shared)

    def write_plots(self, records: Sequence[Any], folder: str, title: str) -> dict[str, str]:
        """Method-specific figures in `folder` (`{name: path}`); the runner draws the reliability and
        risk-coverage plots of `item_results` itself."""
        return {}

    def bind_output(self, folder: str) -> None:
        """Called with the dataset's output folder before `evaluate` (e.g. where a streaming method checkpoints)."""

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
        from safetensors.torch import save

        from .. import __version__

        folder = os.fspath(folder)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_tensors().items()}
        with atomic_write(os.path.join(folder, STATE_TENSORS_FILE), "wb") as f:
            f.write(save(tensors, metadata={"catto_evaluator": self.name}))
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
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = os.fspath(folder)
    meta_path = os.path.join(folder, STATE_JSON_FILE)
    if not os.path.exists(meta_path):
        raise ConfigError(f"{folder} holds no {STATE_JSON_FILE}; it is not a saved catto evaluator. Fix: pass the "
                          "folder `Evaluator.save` (or catto eval's <out>/evaluator) wrote.")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        cls = get_method_class(meta.get("method"))
        evaluator = cls(cls.config_class(**meta["config"]))
    except ConfigError as err:
        raise ConfigError(f"{meta_path}: {err}") from err
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{meta_path} is not a valid saved evaluator ({type(err).__name__}: {err}). Fix: save it "
                          "again.") from err
    tensors_path = os.path.join(folder, STATE_TENSORS_FILE)
    try:
        tensors = load_file(tensors_path) if os.path.exists(tensors_path) else {}
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"{tensors_path} is damaged ({err}). Fix: save the evaluator again.") from err
    evaluator.load_state(tensors, meta.get("state", {}))
    evaluator.fitted = bool(meta.get("fitted", False))
    return evaluator
