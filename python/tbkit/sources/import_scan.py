"""The imports a file needs, read from its syntax tree before anything runs, so that every missing
package is named at once instead of one per attempt.

Counted: ``import a``, ``import a.b``, ``from a import b`` (absolute) that always run at import
time: at top level and in ``with`` / ``try`` blocks. Not counted: imports in functions and
classes; imports guarded by ``try`` / ``except ImportError`` (or a broader except); imports under
any ``if`` — ``if TYPE_CHECKING:``, a ``__main__`` guard, ``if sys.version_info < (3, 11):
import tomli``, ``if torch.cuda.is_available(): import flash_attn`` all may never run; relative
imports; and every import after a top-level statement that calls anything or touches
``sys.path`` / ``sys.modules`` (the scan cannot know what those make importable). A miss is
harmless (the real import still fails and is reported); a false "missing" would refuse a model
that loads.
A package is missing when ``importlib.util.find_spec`` finds nothing for it with the load's
folders on ``sys.path``; a submodule (``a.b``) is checked only when its parent is already
imported, because finding it would otherwise import (run) the parent.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

# pip names that differ from the module name (the common ones in model code)
PIP_NAMES = {
    "sklearn": "scikit-learn",
    "cv2": "opencv-python",
    "PIL": "Pillow",
    "yaml": "PyYAML",
    "bs4": "beautifulsoup4",
    "skimage": "scikit-image",
    "flash_attn": "flash-attn",
    "mamba_ssm": "mamba-ssm",
    "causal_conv1d": "causal-conv1d",
    "megatron": "megatron-core",
    "attr": "attrs",
    "dateutil": "python-dateutil",
    "google": "protobuf",
    "Crypto": "pycryptodome",
    "lightning_fabric": "lightning",
    "pytorch_lightning": "pytorch-lightning",
    "sentence_transformers": "sentence-transformers",
    "torch_geometric": "torch-geometric",
    "faiss": "faiss-cpu",
}
_GUARDING = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
_PATH_CHANGES = ("sys.path", "sys.modules", "sys.meta_path", "addsitedir", "__path__")


@dataclass
class Missing:
    module: str  # as written in the import (``a.b``)
    name: str  # what is missing: the top-level package, or the submodule
    line: Optional[int]  # None: raised while the code ran (advice.missing_import_error), not read from a line

    @property
    def pip(self) -> str:
        return PIP_NAMES.get(self.name, self.name)


def missing(text: str) -> list[Missing]:
    """The imports of ``text`` that cannot be found (call with the load's folders on sys.path);
    one entry per missing name, in file order. Unparsable text gives none (compile() reports it)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    out: dict[str, Missing] = {}
    for module, line in _imports(tree.body):
        name = _missing_part(module)
        if name is not None and name not in out:
            out[name] = Missing(module, name, line)
    return list(out.values())


def _imports(body: list[ast.stmt]) -> Iterator[tuple[str, int]]:
    """(dotted module, line) of the imports that always run at import time, in order; stops at a
    statement that might change what can be imported."""
    for node in body:
        if isinstance(node, ast.Import):
            yield from ((a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and node.module != "__future__":
                yield node.module, node.lineno
        elif _changes_imports(node):
            return
        elif isinstance(node, ast.With):
            yield from _imports(node.body)
        elif isinstance(node, ast.Try):
            if not any(_guards_imports(h) for h in node.handlers):
                yield from _imports(node.body)
            yield from _imports(node.finalbody)


def _changes_imports(node: ast.stmt) -> bool:
    """Whether the statement might change what can be imported: it mentions sys.path & co., or
    calls anything (``setup_paths()``, ``site.addsitedir(…)``); functions and classes only define."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)):
        return False
    if isinstance(node, ast.Try):  # a handler that only logs (``except ImportError: warn(…)``) changes nothing
        always = [*node.body, *node.orelse, *node.finalbody]
        return any(map(_changes_imports, always)) or any(_mentions_path(h) for h in node.handlers)
    return any(isinstance(n, ast.Call) for n in ast.walk(node)) or _mentions_path(node)


def _mentions_path(node: ast.AST) -> bool:
    text = ast.unparse(node)
    return any(marker in text for marker in _PATH_CHANGES)


def _guards_imports(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(
        (isinstance(t, ast.Name) and t.id in _GUARDING) or (isinstance(t, ast.Attribute) and t.attr in _GUARDING)
        for t in types
    )


def _missing_part(module: str) -> Optional[str]:
    """The missing top-level package, or the missing submodule of an imported parent; else None."""
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name in sys.modules:
            continue
        if i > 1 and ".".join(parts[: i - 1]) not in sys.modules:
            return None  # finding it would import its parent: left to the real import
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except ModuleNotFoundError:  # the (imported) parent is not a package: ``import os.x`` fails too
            return name
        except (ImportError, ValueError, AttributeError):
            return None  # a broken or unusual package: let the real import speak
    return None
