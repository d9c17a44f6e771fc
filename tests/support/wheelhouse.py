"""Real wheels for the reinstall tests, fetched once per machine into a local wheelhouse.

`scripts/test.sh` runs this file before pytest, so the tests themselves install only with
`--no-index --find-links <wheelhouse>` and never depend on the registry being reachable.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def wanted() -> list[str]:
    return [f"numpy=={v}" for v in NUMPY_VERSIONS] + list(OTHERS)


def have(req: str) -> bool:
    name, version = req.split("==")
    # wheel file names spell the distribution as its project does (PyYAML, PyJWT): compare lower case
    prefix = f"{name}-{version}-".lower()
    return any(p.name.lower().startswith(prefix) for p in WHEELHOUSE.glob("*.whl"))


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
