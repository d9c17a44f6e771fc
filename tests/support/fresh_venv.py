"""Throwaway venvs that reuse the test interpreter's heavy packages (torch is several GB) instead of
installing them again.

- ``venv_over_tests(path)``: sees everything the test interpreter sees, what `--system-site-packages`
  gives when the tests run on a system Python. When the test interpreter is itself a venv
  (scripts/test.sh runs in .venv/), `python -m venv --system-site-packages` would expose only the *base*
  interpreter's site-packages — no torch — so a .pth file adds the test venv's site-packages too.
- ``fresh_venv(path, share)``: a venv without system site-packages that sees only ``share`` (e.g.
  ipykernel, torch, numpy) and what they require, as a bare local kernel would hold.

Why a view of symlinks (folder outside the venv, added by a .pth) rather than `uv pip install` from uv's
cache: it costs no copy and no download whatever installed the test interpreter's torch (uv, pip, conda,
a CUDA index), it shows exactly the distributions asked for and nothing else, and pip never uninstalls
from it — pip refuses to remove a distribution outside the venv it runs in ("outside environment"), so
a plan that replaced numpy would install beside the view and never delete the test interpreter's files.
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement


def _site_packages(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return Path(out)


def _add_site_dirs(python: Path, dirs: list, name: str) -> None:
    """A .pth in the venv that adds ``dirs`` with site.addsitedir (so their own .pth files run too)."""
    lines = "".join(f"import site; site.addsitedir({str(d)!r})\n" for d in dirs)
    (_site_packages(python) / name).write_text(lines)


def this_site_dirs() -> list:
    """The site-packages folders of the test interpreter's own venv ([] on a system Python)."""
    if sys.prefix == sys.base_prefix:
        return []
    paths = sysconfig.get_paths()
    return [Path(p) for p in dict.fromkeys((paths["purelib"], paths["platlib"])) if Path(p).is_dir()]


def venv_over_tests(path: Path) -> Path:
    """`python -m venv --system-site-packages` that also sees a venv test interpreter's packages; returns
    the venv's python."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(path)], check=True)
    python = path / "bin" / "python"
    if this_site_dirs():
        _add_site_dirs(python, this_site_dirs(), "_tbkit_tests_site.pth")
    return python


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(names: tuple) -> list:
    """The installed distributions ``names`` need (their run-time requirements, transitively)."""
    seen: dict = {}
    todo = list(names)
    while todo:
        name = _canonical(todo.pop())
        if name in seen:
            continue
        dist = metadata.distribution(name)
        seen[name] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def _link_view(view: Path, dists: list) -> None:
    """Symlink each distribution's top-level entries (packages, modules, .dist-info, .libs) into ``view``."""
    view.mkdir(parents=True)
    for dist in dists:
        site = Path(str(dist.locate_file("")))
        for top in sorted({f.parts[0] for f in dist.files or [] if f.parts}):
            if top in ("..", "__pycache__") or (view / top).exists():
                continue  # scripts live in bin/; a namespace folder (nvidia/) is linked once, whole
            if (site / top).exists():
                (view / top).symlink_to(site / top)


def fresh_venv(path: Path, share: tuple = ("ipykernel", "torch", "numpy")) -> Path:
    """A venv with pip and, through a view of symlinks beside it, only ``share`` and their requirements;
    returns the venv's python."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    python = path / "bin" / "python"
    view = path.parent / f"{path.name}-shared-view"  # outside the venv: pip will not uninstall from it
    _link_view(view, closure(share))
    _add_site_dirs(python, [view], "_tbkit_tests_shared_view.pth")
    return python
