"""The project's one version: `version` in rust/probe/Cargo.toml (maturin gives it to the wheel, the
compiled probe gives it to `tbkit.__version__`)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CARGO_TOML = ROOT / "rust" / "probe" / "Cargo.toml"


def cargo_version() -> str:
    package = CARGO_TOML.read_text(encoding="utf-8").split("[package]", 1)[1].split("\n[", 1)[0]
    (version,) = re.findall(r'^version\s*=\s*"([^"]+)"', package, re.M)
    return version
