"""Every registered method on both tiny architectures (Llama and Qwen2): fit, evaluate, save, reload, and the same
records again; the records are what the runner expects (one per item, in order)."""

from __future__ import annotations

import pytest
from test_secl import VOCAB, _items, _tokenizer

from catto.eval.results import ItemResult
from catto.methods import BUILTIN_METHODS, get_method_class, load_evaluator
from catto.data.synthetic import make_model

SMALL = {
    "scoring": {"scoring": "letter"},
    "temperature": {"scoring": "letter"},
    "msp": {"scoring": "letter", "bootstrap": 20},
    "coral": {"scoring": "cloze", "hidden_sizes": [8], "epochs": 2, "weight_decays": [0.0],
              "output_penalties": [0.0], "layers": [1]},
    "secl": {"gate": "always", "train_steps": 1, "lora_layers": 1, "target_modules": ["q_proj"], "warmup": 1,
             "checkpoint_every": 1000},
    "confidence_at_k": {"k": 2, "max_new_tokens": 3},
    "token": {"max_length": 128},
}


@pytest.fixture(scope="module")
def tok():
    return _tokenizer()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("name", list(BUILTIN_METHODS))
def test_method_runs_and_reloads_on_both_architectures(name, arch, tok, tmp_path):
    cls = get_method_class(name)
    model = make_model(arch, vocab_size=len(VOCAB), hidden=32, layers=2, seed=1).eval()
    items = _items(10, seed=2)
    fit, test = items[:6], items[6:]
    config = cls.config_class(**SMALL[name])
    method = cls(config)
    method.progress = False
    if cls.needs_labels or name == "confidence_at_k":
        method.fit(model, tok, fit)
    records = method.evaluate(model, tok, test)
    assert [r.id for r in records] == [it.id for it in test]
    item_results = method.item_results(records)
    if name == "token":
        assert item_results is None and all(len(r.chosen.confidence) >= 2 for r in records)
    else:
        assert all(isinstance(r, ItemResult) and abs(sum(r.option_probs) - 1) < 1e-5 for r in item_results)
    method.save(tmp_path / "saved")
    again = load_evaluator(tmp_path / "saved")
    again.progress = False
    if name == "secl":  # a stream trains as it goes: the reload restores its adapter state, not a replay
        assert again.describe()["config"] == method.describe()["config"]
        return
    assert type(again) is cls and again.describe() == method.describe()
    assert [r.to_json() for r in again.evaluate(model, tok, test)] == [r.to_json() for r in records]
