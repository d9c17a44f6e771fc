"""One version, one place: `version` in rust/probe/Cargo.toml. maturin gives it to the wheel
(pyproject.toml declares it dynamic), the compiled probe gives it to `tbkit.__version__` and
`tbkit --version`, and the notebook, README and docs pin `tbkit-ml==` that version. Bumping it
anywhere else, or forgetting one of them, fails here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from project_version import cargo_version

ROOT = Path(__file__).resolve().parents[2]
_V = r"([0-9][0-9A-Za-z.!+]*[0-9A-Za-z])"  # a version, without a sentence's final period
PIN = re.compile(r"tbkit-ml==" + _V)
WHEEL_NAME = re.compile(r"tbkit_ml-" + _V + r"(?:-|\.tar\.gz)")
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


def test_pyproject_takes_the_version_from_cargo():
    project = (ROOT / "pyproject.toml").read_text().split("[project]", 1)[1].split("\n[", 1)[0]
    assert 'dynamic = ["version"]' in project
    assert not re.search(r"^version\s*=", project, re.M), "a second version in pyproject.toml would drift"
    assert 'manifest-path = "rust/probe/Cargo.toml"' in (ROOT / "pyproject.toml").read_text()


def test_cargo_lock_agrees():
    lock = (ROOT / "Cargo.lock").read_text()
    assert f'name = "tbkit-probe"\nversion = "{cargo_version()}"' in lock


@pytest.mark.quick
def test_tbkit_version_and_the_command_are_the_compiled_version():
    import tbkit
    import tbkit._probe

    assert tbkit.__version__ == tbkit._probe.__version__ == cargo_version()
    out = subprocess.run([sys.executable, "-m", "tbkit", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"tbkit {cargo_version()}"


def test_the_notebook_pins_this_version():
    nb = json.loads((ROOT / "notebooks" / "tbkit_template.ipynb").read_text(encoding="utf-8"))
    install = "".join(nb["cells"][1]["source"])
    assert PIN.findall(install) == [cargo_version()], install


def test_readme_and_docs_state_this_version():
    found = {}
    for rel in DOCS:
        text = (ROOT / rel).read_text(encoding="utf-8")
        for version in PIN.findall(text) + WHEEL_NAME.findall(text):
            found.setdefault(version, []).append(rel)
    assert cargo_version() in found, "README/docs should say which version to install"
    stale = {v: where for v, where in found.items() if v != cargo_version()}
    assert not stale, f"README/docs name another version than rust/probe/Cargo.toml's {cargo_version()}: {stale}"


@pytest.mark.slow
def test_the_wheel_carries_this_version(tbkit_wheel):
    assert WHEEL_NAME.match(tbkit_wheel.name).group(1) == cargo_version(), tbkit_wheel.name
    with zipfile.ZipFile(tbkit_wheel) as zf:
        (metadata,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        headers = zf.read(metadata).decode().split("\n\n", 1)[0].splitlines()
    assert "Name: tbkit-ml" in headers and f"Version: {cargo_version()}" in headers
