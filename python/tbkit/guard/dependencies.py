"""Is this kernel ready for tbkit? Its core requirements, found missing and installed through the gate.

The notebook installs tbkit-ml with ``--no-deps`` (right in Colab, where torch, numpy, pandas, matplotlib
and tqdm are loaded or present). A local Jupyter or VS Code kernel has only what its owner installed, so
cell 1 calls ``ensure_requirements()``: it reads the core requirements from tbkit-ml's installed metadata
(never a copy that could drift), finds the missing ones with ``importlib.util.find_spec`` (nothing is
imported), and installs only those through the install gate. A missing module is not loaded, so the plan
replaces nothing live. torch is never installed here (several GB, and the right build depends on the
machine): the answer is the install line for this platform.

Imports nothing heavy: the standard library, tbkit.errors, and the gate only when something is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
import platform
import shutil
import sys
from dataclasses import dataclass
from importlib import metadata

from tbkit.errors import TbkitError

DISTRIBUTION = "tbkit-ml"
_TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


class NotReady(TbkitError):
    """A core requirement of tbkit is missing from this environment."""


@dataclass(frozen=True)
class Readiness:
    """What ``ensure_requirements`` found and did. ``problem`` is one paragraph, empty when ready."""

    required: tuple[str, ...]  # the core requirement strings, as tbkit-ml's metadata declares them
    missing: tuple[str, ...] = ()  # those whose module was not found before anything was installed
    installed: tuple[str, ...] = ()  # "name==version" the gate installed
    problem: str = ""

    @property
    def ready(self) -> bool:
        return not self.problem

    def __str__(self) -> str:
        if self.problem:
            return self.problem
        if self.installed:
            return f"tbkit is ready: installed {', '.join(self.installed)} through the install gate."
        return f"tbkit is ready: {', '.join(_name(r) for r in self.required)} are installed."


def core_requirements(distribution: str = DISTRIBUTION) -> tuple[str, ...]:
    """The requirements ``distribution`` declares for every install (no extra), for this platform."""
    from tbkit.guard.gate.requirements import packaging_modules

    requirement_cls = packaging_modules()[0].Requirement
    core = []
    for text in metadata.requires(distribution) or []:
        req = requirement_cls(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):  # `extra == "tier2"` is False here
            core.append(text.split(";")[0].strip())
    return tuple(core)


def _name(requirement: str) -> str:
    from tbkit.guard.gate.requirements import packaging_modules

    return str(packaging_modules()[0].Requirement(requirement).name)


def _module(requirement: str) -> str:
    """The import name of a core requirement (the five are spelled alike; `-` is `_` in a module)."""
    return _name(requirement).lower().replace("-", "_")


def missing_requirements(required: tuple[str, ...]) -> tuple[str, ...]:
    """Those of ``required`` whose top-level module cannot be found (find_spec imports nothing)."""
    importlib.invalidate_caches()  # a package installed by an earlier cell must be seen
    return tuple(r for r in required if _module(r) not in sys.modules and importlib.util.find_spec(_module(r)) is None)


def torch_install_line() -> str:
    """The pip line that installs a torch build fitting this machine."""
    pip = "%pip" if "ipykernel" in sys.modules else f"{sys.executable} -m pip"
    if sys.platform == "linux" and shutil.which("nvidia-smi") is None:
        return f"{pip} install torch --index-url {_TORCH_CPU_INDEX}"  # PyPI's Linux torch carries CUDA (GBs)
    return f"{pip} install torch"  # macOS, Windows, and Linux with an NVIDIA GPU: PyPI's build fits


def _torch_paragraph(others: str) -> str:
    machine = f"{platform.system() or sys.platform} {platform.machine()}".strip()
    gpu = " with an NVIDIA GPU" if shutil.which("nvidia-smi") else ""
    also = f" ({others})" if others else ""
    return (
        f"tbkit is not ready: torch is not installed in this Python ({sys.executable}), and tbkit does not "
        f"install it for you: it is several GB and the right build depends on the machine{also}. For this "
        f"machine ({machine}{gpu}) run `{torch_install_line()}` (other builds: https://pytorch.org/get-started/"
        "locally/), then run this cell again."
    )


def ensure_requirements(*, quiet: bool = False, distribution: str = DISTRIBUTION) -> Readiness:
    """Install the missing core requirements of ``distribution`` through the gate; never raises.

    Returns a Readiness; when it is not ready, its ``problem`` (one paragraph: why, and what to do) has
    been printed unless ``quiet``."""
    result = _ensure(distribution, quiet)
    if (result.problem or result.installed) and not quiet:
        print(result, flush=True)  # the problem paragraph, or what was installed
    return result


def _ensure(distribution: str, quiet: bool) -> Readiness:
    try:
        required = core_requirements(distribution)
    except metadata.PackageNotFoundError:
        return Readiness(
            (),
            problem=f"tbkit is not ready: the distribution {distribution} is not installed in this Python "
            f"({sys.executable}), so its requirements cannot be read. Install it: `pip install {distribution}`.",
        )
    missing = missing_requirements(required)
    wanted = tuple(r for r in missing if _name(r).lower() != "torch")
    installed: tuple[str, ...] = ()
    note = ""
    if wanted:
        from tbkit.guard.gate import ensure

        try:
            installed = tuple(ensure(*wanted, quiet=quiet).installed)
        except TbkitError as err:  # InstallRefused / InstallFailed: one paragraph with the fix
            names = ", ".join(_name(r) for r in wanted)
            problem = f"tbkit is not ready: {names} {'is' if len(wanted) == 1 else 'are'} missing from this Python, and the install gate could not install {'it' if len(wanted) == 1 else 'them'}: {err}"
            return Readiness(required, missing, problem=" ".join(problem.split()))
        note = f"installed {', '.join(installed) or ', '.join(wanted)} through the install gate meanwhile"
    if len(wanted) < len(missing):  # torch
        return Readiness(required, missing, installed, _torch_paragraph(note))
    return Readiness(required, missing, installed)


def require_ready(distribution: str = DISTRIBUTION) -> None:
    """Raise NotReady (one paragraph) when a core requirement is missing; for code about to import one."""
    try:
        missing = missing_requirements(core_requirements(distribution))
    except metadata.PackageNotFoundError:
        return  # a checkout on sys.path without metadata: nothing to compare with
    if missing:
        names = ", ".join(_name(r) for r in missing)
        raise NotReady(
            f"tbkit is not ready: {names} {'is' if len(missing) == 1 else 'are'} not installed in this Python ({sys.executable})",
            "Run `tbkit.ensure_requirements()` (the template notebook's first cell does), which installs what is "
            "missing through the install gate and says what to do about torch.",
        )
