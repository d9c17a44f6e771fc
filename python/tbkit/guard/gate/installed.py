"""What is installed on disk, read from dist-info metadata — never by importing the package.

Importing a package to learn its version is exactly what must not happen in a process whose files
may have been replaced; ``importlib.metadata`` only reads ``*.dist-info`` files.
"""

from __future__ import annotations

import importlib.metadata as md
from typing import Optional

from tbkit.guard.gate.requirements import Req, packaging_modules


def installed_version(name: str) -> Optional[str]:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def satisfied(req: Req) -> bool:
    """Is a name requirement (``Req`` of kind "name") met by what is on disk, extras included?"""
    requirement = req.requirement
    if req.name is None or requirement is None:
        return False  # a URL or a path: only pip can say what it is
    version = installed_version(req.name)
    if version is None or not requirement.specifier.contains(version, prereleases=True):
        return False
    if not requirement.extras:
        return True
    requirements = packaging_modules()[0]
    for line in md.requires(req.name) or ():
        dep = requirements.Requirement(line)
        if dep.marker is None:
            continue  # a base dependency: pip checked it when this distribution was installed
        if not any(dep.marker.evaluate({"extra": extra}) for extra in requirement.extras):
            continue
        dep_version = installed_version(dep.name)
        if dep_version is None or not dep.specifier.contains(dep_version, prereleases=True):
            return False
    return True


def top_level_modules(name: str) -> list[str]:
    """The importable top-level names a distribution provides (top_level.txt, else its RECORD)."""
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        return []
    text = dist.read_text("top_level.txt")
    if text:
        names = {line.strip().replace("/", ".") for line in text.splitlines()}
    else:
        names = set()
        for f in dist.files or ():
            parts = f.parts
            if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith((".dist-info", ".data")):
                continue
            if len(parts) == 1:
                base = parts[0]
                if base.endswith(".py"):
                    names.add(base[:-3])
                elif base.endswith((".so", ".pyd")):
                    names.add(base.split(".", 1)[0])
            elif parts[-1] == "__init__.py" and len(parts) == 2:
                names.add(parts[0])
    return sorted(n for n in names if n and n.isidentifier() and not n.startswith("_") and n != "tests")
