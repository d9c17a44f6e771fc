"""The gate's parts never import back from the package ``__init__``: the flow lives in
``gate/flow.py`` and ``gate/__init__.py`` only re-exports it, so every dependency is visible at
the top of the module that has it."""

from __future__ import annotations

import ast
from pathlib import Path

import tbkit.guard.gate as gate
from tbkit.guard.gate import flow

GATE = Path(gate.__file__).parent
PARTS = sorted(p for p in GATE.glob("*.py") if p.name != "__init__.py")


def _imports_from_the_package(path: Path) -> list:
    """Names a module takes from ``tbkit.guard.gate`` itself (sibling submodules are fine)."""
    submodules = {p.stem for p in GATE.glob("*.py")}
    bad = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module == "tbkit.guard.gate":
            bad += [a.name for a in node.names if a.name not in submodules]
        if isinstance(node, ast.ImportFrom) and node.module == "tbkit.guard":
            bad += [f"tbkit.guard.{a.name}" for a in node.names if a.name == "gate"]
        if isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name == "tbkit.guard.gate"]
    return bad


def test_no_part_of_the_gate_imports_from_its_package_init():
    assert PARTS and all(_imports_from_the_package(p) == [] for p in PARTS), {
        p.name: _imports_from_the_package(p) for p in PARTS if _imports_from_the_package(p)
    }


def test_the_package_init_only_re_exports_the_flow():
    tree = ast.parse((GATE / "__init__.py").read_text(encoding="utf-8"))
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    assert all(isinstance(n, (ast.ImportFrom, ast.Assign)) for n in body)
    for name in gate.__all__:
        assert getattr(gate, name) is getattr(flow, name), name
    assert gate.ensure.__module__ == "tbkit.guard.gate.flow"
