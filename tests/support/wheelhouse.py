"""Real wheels for the reinstall tests, fetched once per machine into a local wheelhouse.

`scripts/test.sh` runs this file before pytest, so the tests themselves install only with
`--no-index --find-links <wheelhouse>` and never depend on the registry being reachable.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

WHEELHOUSE = Path(os.environ.get("TBKIT_WHEELHOUSE", Path.home() / ".cache" / "tbkit-tests" / "wheelhouse"))

# Three NumPy lines users actually hit (docs/probe.md), plus small packages for the negative scenarios.
NUMPY_VERSIONS = ("1.26.4", "2.0.2", "2.2.6")
OTHERS = ("six==1.17.0", "pip==25.3", "packaging==25.0")
# captum for the Tier 2 gate test that installs it (pure Python; its deps come from the system).
OTHERS += ("captum==0.9.0",)
# The probe's wider matrix (issue 17): PyYAML (distribution `pyyaml`, modules `yaml` and the C
# extension `yaml._yaml`) and PyJWT (distribution `pyjwt`, module `jwt`, pure Python) — import names
# that differ from distribution names, upgraded between `import tbkit` and their first import;
# setuptools to build the small C extension the editable-install scenarios install.
OTHERS += ("pyyaml==6.0.1", "pyyaml==6.0.2", "pyjwt==2.9.0", "pyjwt==2.10.1", "setuptools==80.9.0")
# What the template notebook installs into a bare kernel (tbkit-ml's core requirements but torch and
# numpy) and what those need on Linux, at the versions a fresh environment resolved (issue 24); served by
# the notebook test's package index. No numpy here: the kernel's own numpy satisfies them.
NOTEBOOK_DEPS = ("pandas==3.1.1", "matplotlib==3.11.2", "tqdm==4.70.1")
NOTEBOOK_DEPS += ("python-dateutil==4.0.0", "tzdata==2026.6", "contourpy==1.3.3", "cycler==0.12.1")
NOTEBOOK_DEPS += ("fonttools==4.68.0", "kiwisolver==1.5.1", "pillow==13.0.0", "pyparsing==3.3.3")
OTHERS += NOTEBOOK_DEPS


def wanted() -> list[str]:
    return [f"numpy=={v}" for v in NUMPY_VERSIONS] + list(OTHERS)


def _normalized(name: str) -> str:
    # wheel file names spell the distribution as its project does (PyYAML, python_dateutil): compare
    # lower case with -, _ and . alike
    return re.sub(r"[-_.]+", "_", name).lower()


def have(req: str) -> bool:
    return wheel_of(req) is not None


def wheel_of(req: str) -> Optional[Path]:
    """The wheel in the wheelhouse for ``name==version``, or None."""
    name, version = req.split("==")
    for p in WHEELHOUSE.glob("*.whl"):
        parts = p.name.split("-")
        if _normalized(parts[0]) == _normalized(name) and parts[1] == version:
            return p
    return None


def ensure() -> Path:
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    for req in wanted():
        if not have(req):
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--disable-pip-version-check",
                    "--only-binary",
                    ":all:",
                    "--no-deps",
                    "-d",
                    str(WHEELHOUSE),
                    req,
                ],
                check=True,
            )
    return WHEELHOUSE


if __name__ == "__main__":
    print(ensure())
