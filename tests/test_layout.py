"""The package's shape: no library module imports the command layer, the import graph has no circles, importing the
metrics does not load TRL or transformers, and the old flat import paths still work."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "catto"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every catto module `path` imports, at module level or inside functions."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("catto"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("catto"):
                continue
            found.add(target)
            for alias in node.names:  # `from . import x` may name a submodule
                if (ROOT.parent / (target + "." + alias.name).replace(".", os.sep)).with_suffix(".py").exists():
                    found.add(f"{target}.{alias.name}")
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def test_no_library_module_imports_the_command_layer():
    offenders = {m: sorted(d for d in deps if d == "catto.cli" or d.startswith("catto.cli."))
                 for m, deps in _graph().items() if not m.startswith("catto.cli")}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_import_graph_has_no_cycles():
    graph = _graph()
    # a package's __init__ is imported before its submodules: the edge submodule -> its own package is implied
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_graph_sees_real_edges():
    """The checker is not vacuous: it finds the edges that must be there."""
    graph = _graph()
    assert "catto.eval.scoring" in graph["catto.methods.base"]
    assert "catto.train.fused_head" in graph["catto.eval.token"]  # token calibration reuses the trainer's kernel
    assert "catto.eval.runner" in graph["catto.cli.eval"]


def test_importing_the_metrics_loads_neither_trl_nor_transformers():
    code = ("import sys, catto.eval.metrics, catto.metrics, catto; "
            "print(sorted(m for m in ('trl', 'transformers', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("old,new", [
    ("catto.scoring", "catto.eval.scoring"), ("catto.metrics", "catto.eval.metrics"),
    ("catto.evaluators", "catto.methods"), ("catto.evaluators.coral", "catto.methods.coral"),
    ("catto.confidence_at_k", "catto.methods.confidence_at_k"), ("catto.fused_head", "catto.train.fused_head"),
    ("catto.callbacks", "catto.train.callbacks"), ("catto.results", "catto.eval.results"),
])
def test_old_import_paths_are_the_same_modules(old, new):
    import importlib

    old_module, new_module = importlib.import_module(old), importlib.import_module(new)
    assert old_module is new_module and new_module.__spec__.name == new


def test_readme_imports_work():
    import trl
    from catto.confidence_at_k import ConfidenceAtKConfig, confidence_at_k  # noqa: F401
    from catto.evaluators import get_evaluator_class, load_evaluator  # noqa: F401

    from catto import CATTOConfig, CATTODPOTrainer  # noqa: F401
    from catto.train import CalibrationEvalCallback, CATTOScriptArguments  # noqa: F401

    assert issubclass(CATTOScriptArguments, trl.ScriptArguments)
