"""Shared fixtures. Tests start what they need themselves (venvs, servers, kernels)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tbkit_wheel(tmp_path_factory) -> Path:
    """The tbkit wheel built from this checkout: $TBKIT_WHEEL (scripts/test.sh builds it once),
    else built here with maturin."""
    env_wheel = os.environ.get("TBKIT_WHEEL")
    if env_wheel and Path(env_wheel).is_file():
        return Path(env_wheel).resolve()  # tests chdir and pass it to pip in other folders
    import shutil
    import sysconfig

    out = tmp_path_factory.mktemp("wheel")
    beside = Path(sysconfig.get_path("scripts")) / "maturin"
    maturin = str(beside) if beside.exists() else shutil.which("maturin") or "maturin"
    subprocess.run([maturin, "build", "--release", "--quiet", "--out", str(out)], cwd=ROOT, check=True)
    (wheel,) = out.glob("tbkit_ml-*.whl")  # the distribution is tbkit-ml
    return wheel


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    """Local wheels (NumPy 1.26.4 / 2.0.2 / 2.2.6, six, pip, packaging); see tests/support/wheelhouse.py."""
    import wheelhouse as wh

    missing = [r for r in wh.wanted() if not wh.have(r)]
    if missing:
        pytest.fail(
            f"wheelhouse {wh.WHEELHOUSE} lacks {missing}; run `python3 tests/support/wheelhouse.py` "
            "(scripts/test.sh does) to fetch them once"
        )
    return wh.WHEELHOUSE


def pytest_collection_modifyitems(config, items) -> None:
    """The full Hugging Face corpus (``@pytest.mark.corpus``, ~25 min on 2 cores) runs only when asked
    for: ``-m corpus`` or TBKIT_CORPUS=1 (``.ci/run`` sets it); the default run keeps its fast subset."""
    if "corpus" in (config.getoption("-m") or "") or os.environ.get("TBKIT_CORPUS") == "1":
        return
    skip = pytest.mark.skip(reason="the full corpus runs with -m corpus (or TBKIT_CORPUS=1)")
    for item in items:
        if "corpus" in item.keywords:
            item.add_marker(skip)
