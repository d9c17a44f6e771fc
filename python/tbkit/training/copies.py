"""Training a copy of the caller's model, and refusing copies that would lie.

A deep copy can lie: a function stored on a module (minGPT's ``self.mlpf = lambda x:
m.c_proj(...)``) is copied by reference, so the copy's forward still runs the ORIGINAL's
submodules; training the copy would leave those weights untrained and put gradients on the
caller's model. Such a model is refused with the way out before anything is copied.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterator
from typing import Any, Optional

from tbkit.errors import UsageError
from tbkit.sources.loaded import LoadedModel


def copy_loaded(loaded: LoadedModel, module: Optional[Any] = None) -> LoadedModel:
    """The same LoadedModel facts around another module (a deep copy unless one is given)."""
    if module is None:
        refuse_lying_copies(loaded.module)
        module = copy.deepcopy(loaded.module)
    return loaded.with_module(module)


def refuse_lying_copies(module: Any, way_out: str = "Pass in_place=True to train the model itself") -> None:
    leaks = closures_over_own_submodules(module)
    if leaks:
        raise UsageError(
            f"a copy of this model would still run the original's {', '.join(leaks[:5])} "
            "(a function stored on a module closes over the original submodule, e.g. "
            "self.mlpf = lambda x: m.c_proj(...)), so training the copy would not train it",
            f"{way_out}, or call the submodule from a method instead of a stored lambda.",
        )


def closures_over_own_submodules(model: Any) -> list[str]:
    """Names of ``model``'s submodules that functions stored on its modules close over.

    ``copy.deepcopy`` copies functions by reference (bound methods and ``functools.partial``
    arguments it does copy), so in a copy these closures still reach the original's submodules."""
    names = {id(m): n or "(model)" for n, m in model.named_modules()}

    def closed_over(fn: Any, depth: int = 0) -> Iterator[str]:
        if isinstance(fn, functools.partial):
            fn = fn.func
        for cell in getattr(fn, "__closure__", None) or ():
            with contextlib.suppress(ValueError):  # an empty cell
                value = cell.cell_contents
                if id(value) in names:
                    yield names[id(value)]
                elif depth < 2 and callable(value):  # a closure calling another closure
                    yield from closed_over(value, depth + 1)

    found: list[str] = []
    for sub in model.modules():
        for key, value in vars(sub).items():
            if not key.startswith("_") and callable(value):
                found += [n for n in closed_over(value) if n not in found]
    return found
