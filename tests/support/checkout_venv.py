"""A throwaway venv whose tbkit is this checkout's python/ (a .pth file), for the gate's tests and
benchmark: packages come from a local wheelhouse only, through uv."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UV = [sys.executable, "-m", "uv"]  # uv as installed with the test extras, whatever PATH holds


def checkout_venv(path: Path, wheelhouse: Path, *packages: str) -> Path:
    """uv venv + ``packages`` from ``wheelhouse``; returns the venv's python."""
    subprocess.run([*UV, "venv", "--quiet", "--python", sys.executable, str(path)], check=True)
    python = path / "bin" / "python"
    install = [*UV, "pip", "install", "--quiet", "--python", str(python), "--no-index", "--find-links"]
    subprocess.run([*install, str(wheelhouse), *packages], check=True)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "tbkit_checkout.pth").write_text(str(ROOT / "python") + "\n")
    return python
