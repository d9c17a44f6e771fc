"""The code stays readable as a map: no function in the package is longer than a screen.

Rust has the same bound through clippy's `too_many_lines` (clippy.toml), run by scripts/test.sh."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "python" / "tbkit"
MAX_LINES = 60  # a function that needs more holds more than one property: split it

pytestmark = pytest.mark.quick


def long_functions(root: Path = PACKAGE, limit: int = MAX_LINES) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_is_longer_than_the_limit():
    if not PACKAGE.is_dir():
        pytest.skip("runs against the checkout, not an installed wheel")
    assert long_functions() == []


def test_the_rule_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "m.py").write_text(f"def f():\n{body}\n")
    assert long_functions(tmp_path) == [f"{tmp_path.name}/m.py:1 f ({MAX_LINES + 1} lines)"]
