"""The evaluator interface: registration, safetensors + JSON round trip, label checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from catto.data.items import MCQAItem
from catto.eval.results import ItemResult
from catto.methods import (
    METHODS,
    Evaluator,
    EvaluatorConfig,
    load_evaluator,
    register_method,
)


@dataclasses.dataclass
class _ShiftConfig(EvaluatorConfig):
    shift: float = dataclasses.field(default=0.0, metadata={"help": "added to the first option's logit"})


@register_method
class _ShiftEvaluator(Evaluator):
    """Predicts softmax(w + shift) for a learned per-option vector w (a toy with tensor and JSON state)."""

    name = "_test_shift"
    config_class = _ShiftConfig
    needs_labels = True

    def fit(self, model, tokenizer, items):
        super().fit(model, tokenizer, items)
        self.w = torch.tensor([float(sum(it.gold == k for it in items)) for k in range(4)])
        self.n_fit = len(items)
        return self

    def evaluate(self, model, tokenizer, items):
        w = self.w.clone()
        w[0] += self.config.shift
        p = torch.softmax(w, 0)
        pred = int(p.argmax())
        return [ItemResult(it.id, p.tolist(), pred, float(p[pred]), it.gold, pred == it.gold) for it in items]

    def state_tensors(self):
        return {"w": self.w}

    def state_json(self):
        return {"n_fit": self.n_fit}

    def load_state(self, tensors, state):
        self.w, self.n_fit = tensors["w"], state["n_fit"]


def _items(golds):
    return [MCQAItem(id=f"q{i}", question="?", choices=["a", "b", "c", "d"], gold=g) for i, g in enumerate(golds)]


def test_round_trip_is_identical(tmp_path):
    ev = _ShiftEvaluator(shift=0.5).fit(None, None, _items([1, 1, 2, 3]))
    before = ev.evaluate(None, None, _items([1, 0]))
    ev.save(tmp_path / "ev")
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == ["evaluator.json", "state.safetensors"]
    loaded = load_evaluator(tmp_path / "ev")
    assert isinstance(loaded, _ShiftEvaluator) and loaded.fitted and loaded.config.shift == 0.5
    assert [r.option_probs for r in loaded.evaluate(None, None, _items([1, 0]))] == [r.option_probs for r in before]
    assert loaded.describe()["n_fit"] == 4
    assert "_test_shift" in METHODS


def test_fit_without_labels_names_the_items():
    items = _items([1, 2])
    items[1] = MCQAItem(id="nolabel", question="?", choices=["a", "b"], gold=None)
    with pytest.raises(ValueError, match="nolabel"):
        _ShiftEvaluator().fit(None, None, items)


def test_bad_folder_and_unknown_method(tmp_path):
    from catto.errors import ConfigError

    with pytest.raises(ConfigError, match="not a saved catto evaluator"):
        load_evaluator(tmp_path)
    (tmp_path / "evaluator.json").write_text('{"method": "nope", "config": {}}')
    with pytest.raises(ConfigError, match="evaluator.json: Unknown method 'nope'"):
        load_evaluator(tmp_path)
    (tmp_path / "evaluator.json").write_text('{"method": "temperature", "con')
    with pytest.raises(ConfigError, match="not a valid saved evaluator"):
        load_evaluator(tmp_path)


def test_config_or_kwargs_not_both():
    with pytest.raises(TypeError, match="not both"):
        _ShiftEvaluator(_ShiftConfig(), shift=1.0)


def test_every_builtin_method_is_registered_and_listed_by_catto_eval():
    from catto.cli.eval import build_parser
    from catto.methods import BUILTIN_METHODS, get_method_class, method_names

    for name, module in BUILTIN_METHODS.items():
        cls = get_method_class(name)
        assert cls.name == name and cls.__module__ == module
    assert list(BUILTIN_METHODS) == ["scoring", "temperature", "msp", "coral", "secl", "confidence_at_k", "token"]
    assert set(BUILTIN_METHODS) <= set(method_names())
    assert all(m in build_parser().format_help() for m in BUILTIN_METHODS)
