"""Wheels built with plain zipfile code, for the name-collision tests: a decoy distribution named
`tbkit` (PyPI's `tbkit` is an unrelated project that also installs a top-level `tbkit` package)."""

from __future__ import annotations

from pathlib import Path

from tiny_wheels import make_wheel

# What PyPI's tbkit 0.6.1 ships at the top of the package, shortened: its own __init__.py (which
# replaces ours) and modules beside it.
CLOBBERING = {
    "tbkit/__init__.py": '"""tbkit: build and solve Tight-Binding models (a stand-in for PyPI\'s tbkit)."""\n'
    '__version__ = "9.9.9"\n',
    "tbkit/tightbinding.py": "def hamiltonian():\n    return 'tight-binding'\n",
}
# A decoy that only adds a module: the real tbkit still runs and can say what happened.
ADDING = {"tbkit/tightbinding.py": CLOBBERING["tbkit/tightbinding.py"]}


def build_wheel(out_dir: Path, name: str, version: str, files: dict) -> Path:
    """A pure-Python wheel `name-version-py3-none-any.whl` holding ``files`` (path -> text)."""
    return make_wheel(out_dir, name, version, files=files)
