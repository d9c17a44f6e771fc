"""No import cycle among tbkit's modules, and training's own imports at module top (issue 21).

The graph: one node per module under python/tbkit (a package is its ``__init__``; the compiled
``_probe`` is a leaf); an edge for every import of a tbkit module. ``from tbkit.a import b`` is an
edge to ``tbkit.a.b`` when that is a module, else to ``tbkit.a``. Imports under
``if TYPE_CHECKING:`` are not edges (they never run).

Function-level imports COUNT as edges too. They cannot make ``import`` fail half-way (they run
when the function is called), but two modules that import each other, one of them inside a
function, still need each other: that was ``training/trainer.py`` and ``engine.py``, which this
test would have failed on. Function-level imports stay for deferring heavy libraries (``import
tbkit`` stays light); in ``training/`` a function-level import of a tbkit module is allowed only
for the modules that import lightning at their top (the one reason to defer one), which the
second test pins down.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "python" / "tbkit"
# tbkit modules that import a lazily installed library (lightning) at their top
DEFERRED_OK = {"tbkit.training.lightning_module", "tbkit.training.history"}

pytestmark = pytest.mark.quick


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(node: ast.ImportFrom, current: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(node: ast.AST, current: str, is_package: bool, modules: set) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in modules]
    if isinstance(node, ast.ImportFrom):
        base = _resolve(node, current, is_package)
        found = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        return [m for m in found if m in modules]
    return []


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imports(tree: ast.Module, current: str, is_package: bool, modules: set) -> tuple[set, set]:
    """(module-level tbkit imports, function-level tbkit imports) of one module."""
    top: set = set()
    inner: set = set()

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                continue
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            (inner if in_function else top).update(_targets(child, current, is_package, modules))
            walk(child, nested)

    walk(tree, False)
    return top, inner


def graph(root: Path = PACKAGE) -> tuple[dict, dict]:
    paths = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    # compiled modules (tbkit._probe) are leaves of the graph: ``from tbkit import _probe`` names them
    compiled = {module_name(p.with_name(p.name.split(".")[0] + ".py"), root) for p in root.rglob("*.pyi")}
    modules = set(paths) | compiled
    top, inner = {}, {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        top[name], inner[name] = imports(tree, name, path.name == "__init__.py", modules)
        top[name].discard(name)
    return top, inner


def cycles(edges: dict) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), each sorted."""
    index: dict = {}
    low: dict = {}
    stack: list = []
    on_stack: set = set()
    found: list = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_tbkit_modules():
    if not PACKAGE.is_dir():
        pytest.skip("runs against the checkout, not an installed wheel")
    top, inner = graph()
    assert cycles({m: top[m] | inner[m] - {m} for m in top}) == []


def test_training_imports_its_tbkit_modules_at_module_top():
    if not PACKAGE.is_dir():
        pytest.skip("runs against the checkout, not an installed wheel")
    _, inner = graph()
    late = {m: sorted(t - DEFERRED_OK) for m, t in inner.items() if m.startswith("tbkit.training") and t - DEFERRED_OK}
    assert late == {}


def test_the_rule_sees_a_cycle_and_skips_type_checking_imports(tmp_path):
    pkg = tmp_path / "tbkit"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from tbkit import b\n")
    (pkg / "b.py").write_text("import tbkit.c\n")
    (pkg / "c.py").write_text("from . import a\ndef f():\n    from tbkit import d\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tbkit import c\n")
    top, inner = graph(pkg)
    assert cycles(top) == [["tbkit.a", "tbkit.b", "tbkit.c"]]
    assert inner["tbkit.c"] == {"tbkit.d"} and top["tbkit.d"] == set()


def test_a_cycle_through_a_function_level_import_counts(tmp_path):
    pkg = tmp_path / "tbkit"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "engine.py").write_text("from tbkit.trainer import warmup\n")
    (pkg / "trainer.py").write_text("def fit():\n    from tbkit.engine import CausalLM\n")
    top, inner = graph(pkg)
    assert cycles(top) == []
    assert cycles({m: top[m] | inner[m] for m in top}) == [["tbkit.engine", "tbkit.trainer"]]
