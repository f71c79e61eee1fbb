"""The package's shape: packages import only downward (the layering of docs/design.md), no private name crosses a
package, the module graph has no circles, and importing the metrics does not load TRL or transformers."""

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


# The package layering (docs/design.md, "Layout"): each package may import only the ones listed for it. "base" is the
# top-level modules (errors, io, _logging, _lazy and the package's own __init__), which import no other catto module.
ALLOWED = {
    "base": set(),
    "core": {"base"},
    "data": {"base"},
    "eval": {"base", "core", "data"},
    "train": {"base", "core", "data", "eval"},
    "methods": {"base", "core", "data", "eval"},
    "pipeline": {"base", "core", "data", "eval", "train", "methods"},
    "cli": {"base", "core", "data", "eval", "train", "methods", "pipeline"},
}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else "base"


def _package_edges(graph: dict[str, set[str]]) -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    for module, deps in graph.items():
        for dep in deps:
            if _package(module) != _package(dep):
                edges.setdefault((_package(module), _package(dep)), []).append(f"{module} -> {dep}")
    return edges


def test_every_package_is_in_the_layering():
    on_disk = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert on_disk == set(ALLOWED) - {"base"}


def test_packages_import_only_downward():
    edges = _package_edges(_graph())
    upward = {f"{a} -> {b}": sorted(found) for (a, b), found in edges.items() if b not in ALLOWED[a]}
    assert upward == {}


def test_allowed_package_graph_is_acyclic():
    """The rule itself points one way: a topological order of ALLOWED exists."""
    remaining = {k: set(v) for k, v in ALLOWED.items()}
    order = []
    while remaining:
        ready = sorted(k for k, deps in remaining.items() if not deps - set(order))
        assert ready, f"the layering has a circle among {sorted(remaining)}"
        order += ready
        for k in ready:
            del remaining[k]


def test_no_private_names_imported_across_packages():
    """`from ..core.fused_head import _helper` in another package is refused: cross-package use goes through
    public names."""
    offenders = []
    for path in ROOT.rglob("*.py"):
        module = _module_name(path)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            base = package.split(".")
            target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            if _package(target) == _package(module):
                continue
            offenders += [f"{module}: {target}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert offenders == []


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


def test_checker_sees_real_edges_and_refuses_upward_ones():
    """The checker is not vacuous: it finds edges that must be there, and an upward edge added to the real graph
    is reported."""
    graph = _graph()
    assert "catto.core.fused_head" in graph["catto.eval.token"]  # token calibration calls the kernel directly
    assert "catto.eval.scoring" in graph["catto.methods.base"]
    assert "catto.pipeline.runner" in graph["catto.cli.eval"]
    edges = _package_edges({**graph, "catto.eval.token": graph["catto.eval.token"] | {"catto.train.trainer"}})
    assert ("eval", "train") in edges and "train" not in ALLOWED["eval"]


def test_importing_the_metrics_loads_neither_trl_nor_transformers():
    code = ("import sys, catto.eval.metrics, catto; "
            "print(sorted(m for m in ('trl', 'transformers', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_readme_imports_work():
    import trl
    from catto.methods import get_method_class, load_evaluator  # noqa: F401
    from catto.methods.confidence_at_k import ConfidenceAtKConfig, confidence_at_k  # noqa: F401

    from catto import CATTOConfig, CATTODPOTrainer  # noqa: F401
    from catto.train import CalibrationEvalCallback, CATTOScriptArguments  # noqa: F401

    assert issubclass(CATTOScriptArguments, trl.ScriptArguments)
