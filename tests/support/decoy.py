"""Wheels built with plain zipfile code, for the name-collision tests: a decoy distribution named
`tbkit` (PyPI's `tbkit` is an unrelated project that also installs a top-level `tbkit` package)."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

# What PyPI's tbkit 0.6.1 ships at the top of the package, shortened: its own __init__.py (which
# replaces ours) and modules beside it.
CLOBBERING = {
    "tbkit/__init__.py": '"""tbkit: build and solve Tight-Binding models (a stand-in for PyPI\'s tbkit)."""\n'
    '__version__ = "9.9.9"\n',
    "tbkit/tightbinding.py": "def hamiltonian():\n    return 'tight-binding'\n",
}
# A decoy that only adds a module: the real tbkit still runs and can say what happened.
ADDING = {"tbkit/tightbinding.py": CLOBBERING["tbkit/tightbinding.py"]}


def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(out_dir: Path, name: str, version: str, files: dict) -> Path:
    """A pure-Python wheel `name-version-py3-none-any.whl` holding ``files`` (path -> text)."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    contents = {path: text.encode() for path, text in files.items()}
    contents[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    contents[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: tbkit-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = [f"{path},{_digest(data)},{len(data)}" for path, data in contents.items()]
    record.append(f"{info}/RECORD,,")
    contents[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in contents.items():
            zf.writestr(path, data)
    return wheel
