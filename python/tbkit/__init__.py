"""tbkit: check and train notebook-built transformer models without breaking the notebook.

``import tbkit`` is deliberately light: it loads the compiled probe and takes the integrity
baseline (well under a millisecond), reads its own RECORD to notice another distribution
sharing the `tbkit` folder, and nothing else. torch, pandas and matplotlib are imported only
when a function that needs them is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# One version, one place: rust/probe/Cargo.toml, compiled into the probe (tests/project/test_release_version.py).
from tbkit._probe import __version__
from tbkit.guard import integrity, ownership

integrity.take_baseline()


def _warn_if_shared() -> None:
    # `tbkit` on PyPI is another project with the same top-level package; pip lets both write here.
    try:
        report = ownership.check()
    except Exception:  # a diagnosis must never stop the import
        return
    if not report.ok:
        import warnings

        # warn_explicit with no source file: one line, whoever imported us; still filterable.
        warnings.warn_explicit(report.warning_line(), RuntimeWarning, "tbkit", 0)


_warn_if_shared()

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers only (nothing is imported)
    from tbkit.checks.report import Report as Report
    from tbkit.checks.runner import run as run
    from tbkit.errors import InstallFailed as InstallFailed
    from tbkit.errors import InstallRefused as InstallRefused
    from tbkit.errors import SourceError as SourceError
    from tbkit.errors import TbkitError as TbkitError
    from tbkit.guard.dependencies import NotReady as NotReady
    from tbkit.guard.dependencies import ensure_requirements as ensure_requirements
    from tbkit.guard.gate import ensure as ensure
    from tbkit.guard.gate import install as install
    from tbkit.sources import load as load
    from tbkit.sources.loaded import LoadedModel as LoadedModel
    from tbkit.training.api import train as train
    from tbkit.training.search import search as search

# Public names resolved on first use, so that `import tbkit` imports no heavy library.
_LAZY = {
    "load": ("tbkit.sources", "load"),
    "LoadedModel": ("tbkit.sources.loaded", "LoadedModel"),
    "run": ("tbkit.checks.runner", "run"),
    "Report": ("tbkit.checks.report", "Report"),
    "ensure": ("tbkit.guard.gate", "ensure"),
    "install": ("tbkit.guard.gate", "install"),
    "ensure_requirements": ("tbkit.guard.dependencies", "ensure_requirements"),
    "NotReady": ("tbkit.guard.dependencies", "NotReady"),
    "train": ("tbkit.training.api", "train"),
    "search": ("tbkit.training.search", "search"),
    "TbkitError": ("tbkit.errors", "TbkitError"),
    "SourceError": ("tbkit.errors", "SourceError"),
    "InstallRefused": ("tbkit.errors", "InstallRefused"),
    "InstallFailed": ("tbkit.errors", "InstallFailed"),
}

__all__ = [
    "__version__",
    "integrity",
    "load",
    "LoadedModel",
    "run",
    "Report",
    "ensure",
    "install",
    "ensure_requirements",
    "train",
    "search",
    "TbkitError",
    "SourceError",
    "InstallRefused",
    "InstallFailed",
    "NotReady",
]


def __getattr__(name: str) -> Any:  # one of the public names above, each its own type
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'tbkit' has no attribute {name!r}") from None
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        # torch, pandas, … missing (a bare kernel): say "not ready" and what to run, not a raw traceback
        from tbkit.guard.dependencies import require_ready

        require_ready()
        raise
    value = getattr(module, attr)
    globals()[name] = value
    return value


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext tbkit`."""
    from tbkit.guard.notebook import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from tbkit.guard.notebook import unload_ipython_extension as _unload

    _unload(ipython)
