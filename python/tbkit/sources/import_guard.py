"""Read model code's syntax tree before running it, and refuse code that would train or read data
at import: lecture-style files often end in a training loop at top level, which would make a
load run for hours with no output.

Refused (outside functions, classes and ``if __name__ == "__main__":``):
- a loop whose body calls ``.backward()`` or ``<optimizer>.step()``;
- ``open(...)`` for reading (a data file; writing a marker file is not refused).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import Optional

from tbkit.errors import SourceError

_FIX = (
    'Move it under `if __name__ == "__main__":` (or into a function), so that importing the file only defines '
    "the model; or pass import_guard=False (--no-import-guard) if you accept that it runs."
)


def check(text: str, label: str) -> None:
    """SourceError naming the first offending line; syntax errors are left to compile()."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return
    for node in _top_level(tree.body):
        problem = _training_loop(node) or _data_read(node)
        if problem:
            raise SourceError(
                f"{label} {problem} at line {node.lineno}, at top level: importing the file would run it "
                "(tbkit imports the file to build the model), so it was not run",
                _FIX,
            )


def _top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements that run at import, descending into if/try/with blocks but not into functions,
    classes or a ``__main__`` guard."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, ast.If) and is_main_guard(node.test):
            yield from _top_level(node.orelse)
            continue
        yield node
        if isinstance(node, (ast.If, ast.With, ast.Try)):
            for block in ("body", "orelse", "finalbody"):
                yield from _top_level(getattr(node, block, []) or [])
            for handler in getattr(node, "handlers", []):
                yield from _top_level(handler.body)


def is_main_guard(test: ast.expr) -> bool:
    if not isinstance(test, ast.Compare) or len(test.comparators) != 1:
        return False
    sides = [test.left, test.comparators[0]]
    names = {s.id for s in sides if isinstance(s, ast.Name)}
    consts = {s.value for s in sides if isinstance(s, ast.Constant)}
    return names == {"__name__"} and consts == {"__main__"}


def _calls(node: ast.AST) -> Iterator[ast.Call]:
    """Calls inside ``node``, not looking into nested function or class definitions."""
    stack = [node]
    while stack:
        current = stack.pop()
        for child in ast.iter_child_nodes(current):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue
            if isinstance(child, ast.Call):
                yield child
            stack.append(child)


def _training_loop(node: ast.stmt) -> Optional[str]:
    if not isinstance(node, (ast.For, ast.While, ast.AsyncFor)):
        return None
    for call in _calls(node):
        func = call.func
        if not isinstance(func, ast.Attribute):
            continue
        if func.attr == "backward":
            return "has a training loop (it calls .backward())"
        if func.attr == "step" and "opt" in _receiver_name(func.value).lower():
            return f"has a training loop (it calls {_receiver_name(func.value)}.step())"
    return None


def _receiver_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _data_read(node: ast.stmt) -> Optional[str]:
    if isinstance(node, (ast.For, ast.While, ast.If, ast.With, ast.Try)):
        # compound statements: their own header only (bodies are visited as statements)
        headers = [getattr(node, "iter", None), getattr(node, "test", None)]
        headers += [item.context_expr for item in getattr(node, "items", [])]
        calls = [c for h in headers if h is not None for c in [h, *_calls(h)] if isinstance(c, ast.Call)]
    else:
        calls = [c for c in [node, *_calls(node)] if isinstance(c, ast.Call)]
    for call in calls:
        if _is_open_for_reading(call):
            target = ast.unparse(call.args[0]) if call.args else "a file"
            return f"reads the data file {target[:80]} with open()"
    return None


def _is_open_for_reading(call: ast.Call) -> bool:
    func = call.func
    is_open = (isinstance(func, ast.Name) and func.id == "open") or (
        isinstance(func, ast.Attribute) and func.attr == "open" and _receiver_name(func.value) in ("io", "codecs")
    )
    if not is_open:
        return False
    mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
    if mode is None:
        return True
    return isinstance(mode, ast.Constant) and isinstance(mode.value, str) and not set(mode.value) & set("wax+")
