"""Import paths of catto <= 0.1 (a flat package) that keep working after the split into train/, eval/ and methods/.

`import catto.scoring` gives the very module object `catto.eval.scoring` (no copy, so monkeypatching either name
patches both). New code should use the new paths; these exist so that user scripts written against the flat layout
do not break.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

ALIASES = {
    "catto.calibration": "catto.train.calibration",
    "catto.fused_head": "catto.train.fused_head",
    "catto.config": "catto.train.config",
    "catto.trainer": "catto.train.trainer",
    "catto.callbacks": "catto.train.callbacks",
    "catto.results": "catto.eval.results",
    "catto.metrics": "catto.eval.metrics",
    "catto.evaluation": "catto.eval.aggregate",
    "catto.plots": "catto.eval.plots",
    "catto.modeling": "catto.eval.modeling",
    "catto.scoring": "catto.eval.scoring",
    "catto.token_calibration": "catto.eval.token",
    "catto.answer_parsing": "catto.eval.answer_parsing",
    "catto.report": "catto.eval.report",
    "catto.evaluators": "catto.methods",
    "catto.evaluators.base": "catto.methods.base",
    "catto.evaluators.temperature": "catto.methods.temperature",
    "catto.evaluators.msp": "catto.methods.msp",
    "catto.evaluators.coral": "catto.methods.coral",
    "catto.evaluators.secl": "catto.methods.secl",
    "catto.evaluators.cli": "catto.eval.runner",
    "catto.abstention": "catto.methods.abstention",
    "catto.page_hinkley": "catto.methods.page_hinkley",
    "catto.confidence_at_k": "catto.methods.confidence_at_k",
    "catto.confidence_at_k_plots": "catto.eval.plots",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._spec = module.__spec__  # importlib overwrites __spec__ with the alias's; put the real one back below
        return module

    def exec_module(self, module) -> None:  # the target module is already executed
        module.__spec__ = self._spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in ALIASES:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(ALIASES[fullname]))


def install() -> None:
    """Register the old names (once)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
