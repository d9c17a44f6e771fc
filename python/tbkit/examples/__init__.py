"""Bundled example models, shipped inside the wheel as plain folders (model.py + config.json).

They are data, not imports: ``tbkit.load("tiny_gpt")`` builds them through the same folder
loader as any user export, so the example exercises exactly the path users take.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT = "tiny_gpt"
_HERE = Path(__file__).resolve().parent


def names() -> list[str]:
    """The bundled example names (folders holding a model.py)."""
    return sorted(p.name for p in _HERE.iterdir() if (p / "model.py").is_file())


def path(name: str) -> Path:
    """The folder of a bundled example; KeyError if there is none of that name."""
    if name not in names():
        raise KeyError(name)
    return _HERE / name
