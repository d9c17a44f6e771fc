"""Training's optional libraries (lightning, optuna, …) through the install gate, only when missing."""

from __future__ import annotations

import importlib

from tbkit.guard.gate import ensure

# distribution -> the module that proves it is importable
MODULES = {
    "lightning": "lightning.pytorch",
    "optuna": "optuna",
    "optuna-integration": "optuna_integration",
    "psycopg2-binary": "psycopg2",
}


def require(*requirements: str) -> None:
    """Make sure the given distributions import; install them through the gate when they do not.

    Raises ``InstallRefused`` (from the gate) when installing would break this process."""
    missing = []
    for req in requirements:
        try:
            importlib.import_module(MODULES.get(req, req.replace("-", "_")))
        except ImportError:
            missing.append(req)
    if missing:
        ensure(*missing)
