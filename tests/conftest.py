"""Shared fixtures. Tests start what they need themselves (venvs, servers, kernels)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tbkit_wheel(tmp_path_factory) -> Path:
    """The tbkit wheel built from this checkout: $TBKIT_WHEEL (scripts/test.sh builds it once),
    else built here with maturin."""
    env_wheel = os.environ.get("TBKIT_WHEEL")
    if env_wheel and Path(env_wheel).is_file():
        return Path(env_wheel)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "maturin", "build", "--release", "--quiet", "--out", str(out)],
        cwd=ROOT, check=True,
    )
    (wheel,) = out.glob("tbkit-*.whl")
    return wheel
