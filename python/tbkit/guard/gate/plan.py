"""Ask pip what it *would* do, and judge the answer against what this process has loaded.

The dry run pins every loaded distribution to its loaded version with a constraints file. When pip
cannot resolve with those pins, the same dry run without them tells the two failures apart:
"impossible without replacing something loaded" (refuse, and show what pip would have done) versus
"impossible at all" (unknown package, unreachable index: a plain failure, nothing changed).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from tbkit.errors import InstallFailed, InstallRefused
from tbkit.guard.gate import pip as pipmod
from tbkit.guard.gate.installed import installed_version
from tbkit.guard.gate.requirements import Req, canonical, packaging_modules
from tbkit.guard.gate.runtime import restart_hint

MIN_PIP = (22, 2)  # first pip with `install --dry-run --report`


@dataclass
class PlanItem:
    name: str  # canonical
    version: str
    installed_version: Optional[str]  # on disk now, before the install
    loaded_version: Optional[str]  # loaded in this process (None: not loaded)
    requested: bool
    url: Optional[str] = None  # for direct (URL / path) requirements: what pip resolved it to

    @property
    def action(self) -> str:
        if self.installed_version is None:
            return "new"
        if self.installed_version == self.version:
            return "reinstall"
        Version = packaging_modules()[3].Version
        try:
            up = Version(self.version) > Version(self.installed_version)
        except Exception:  # a legacy, non-PEP 440 version on disk
            return "replace"
        return "upgrade" if up else "downgrade"

    @property
    def touches_loaded(self) -> bool:
        return self.loaded_version is not None

    def pin(self) -> str:
        """The argument that installs exactly this item, and nothing pip would re-resolve."""
        return f"{self.name} @ {self.url}" if self.url else f"{self.name}=={self.version}"

    def line(self) -> str:
        if self.action == "new":
            text = f"+ {self.name} {self.version} (new)"
        else:
            text = f"~ {self.name} {self.installed_version} -> {self.version} ({self.action})"
        if self.touches_loaded:
            text += f"  <- LOADED in this process as {self.loaded_version}: would be replaced under it"
        return text


@dataclass
class Plan:
    """What pip would install for ``requirements``; ``refusal`` says why it must not, if it must not."""

    requirements: list[Req]
    index: pipmod.IndexOptions
    items: list[PlanItem] = field(default_factory=list)
    constrained: bool = True  # False: the items come from the unconstrained retry (shown for the refusal)
    pinned: dict[str, str] = field(default_factory=dict)  # loaded distributions pinned in the dry run
    refusal: Optional[str] = None
    pip_args: list[str] = field(default_factory=list)  # options passed on to pip unchanged (pip_cli.PASSED_ON)

    @property
    def safe(self) -> bool:
        return self.refusal is None

    @property
    def loaded_conflicts(self) -> list[PlanItem]:
        return [i for i in self.items if i.touches_loaded]

    def __str__(self) -> str:
        head = f"tbkit install plan for {' '.join(map(str, self.requirements))} (from {self.index.describe()})"
        if not self.items:
            body = ["  nothing to install: already satisfied"]
        else:
            body = [f"  {i.line()}" for i in self.items]
        if not self.constrained:
            body.append("  (what pip would do without keeping the loaded versions)")
        if self.refusal:
            body.append(f"  REFUSED: {self.refusal}")
        return "\n".join([head, *body])

    def to_dict(self) -> dict[str, Any]:
        return {
            "requirements": [str(r) for r in self.requirements],
            "index": self.index.describe(),
            "items": [
                dict(
                    name=i.name,
                    version=i.version,
                    action=i.action,
                    installed_version=i.installed_version,
                    loaded_version=i.loaded_version,
                    requested=i.requested,
                    url=i.url,
                )
                for i in self.items
            ],
            "constrained": self.constrained,
            "refusal": self.refusal,
        }


def require_pip() -> None:
    version = pipmod.pip_version()
    if version is None or version < MIN_PIP:
        found = "is not installed" if version is None else f"is {'.'.join(map(str, version))}"
        raise InstallRefused(
            f"tbkit cannot plan an install: pip {found} in this interpreter, and the gate needs pip "
            f"{MIN_PIP[0]}.{MIN_PIP[1]} or newer for `pip install --dry-run --report`; nothing was installed",
            "Install a current pip into this environment from a fresh process (python -m ensurepip --upgrade, "
            "or python -m pip install -U pip), then restart and try again.",
        )


def _constraints_file(pinned: dict[str, str], directory: str) -> str:
    path = os.path.join(directory, "loaded-constraints.txt")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("# every distribution loaded in the running process, pinned to its loaded version\n")
        for name, version in sorted(pinned.items()):
            fh.write(f"{name}=={version}\n")
    return path


def _user_constraints_file(constraints: Sequence[str], directory: str) -> Optional[str]:
    """The lines of the user's own -c files (read by pip's parser), applied to every dry run."""
    if not constraints:
        return None
    path = os.path.join(directory, "user-constraints.txt")
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(f"{line}\n" for line in constraints)
    return path


def pinnable(loaded: dict[str, str]) -> dict[str, str]:
    """Loaded distributions pinned the way pip will see them installed.

    The pin is the dist-info's spelling whenever it is the same release as the loaded one: torch says
    ``__version__ == "2.15.0+cu132"`` while its dist-info says ``2.15.0``, and a pin with a local label
    matches only that label, so pinning the in-memory spelling would make pip think torch must change.
    (A real difference between loaded and installed is the probe's "restart required", checked first.)
    Versions that are not PEP 440 cannot be constrained and are left out."""
    Version = packaging_modules()[3].Version
    out: dict[str, str] = {}
    for name, version in loaded.items():
        try:
            loaded_v = Version(str(version))
        except Exception:
            continue
        pin = str(version)
        on_disk = installed_version(name)
        if on_disk is not None and on_disk != pin:
            try:
                if Version(on_disk).public == loaded_v.public:
                    pin = on_disk
            except Exception:
                pass
        out[canonical(name)] = pin
    return out


@dataclass(frozen=True)
class DryRun:
    """The parts of every dry run of one plan: requirements, index, flags and the user's constraints."""

    requirements: Sequence[Req]
    index: pipmod.IndexOptions
    flags: Sequence[str]
    user_constraints: Optional[str]
    workdir: str


def _dry_run(d: DryRun, pins: Optional[str], tag: str) -> tuple[pipmod.PipRun, Optional[dict[str, Any]]]:
    report = os.path.join(d.workdir, f"report-{tag}.json")
    argv = pipmod.base_argv() + ["--dry-run", "--quiet", "--report", report, *d.flags, *d.index.args()]
    for constraints in (pins, d.user_constraints):
        if constraints:
            argv += ["-c", constraints]
    requirements = d.requirements
    argv += [r.text for r in requirements]
    run = pipmod.run_captured(argv, index=d.index)
    data = None
    if run.ok and os.path.exists(report):
        with open(report, encoding="utf-8") as fh:
            data = json.load(fh)
    return run, data


def _items(data: dict[str, Any], loaded: dict[str, str]) -> list[PlanItem]:
    items = []
    for entry in data.get("install", []):
        meta = entry.get("metadata", {})
        name = canonical(meta["name"])
        url = None
        if entry.get("is_direct"):
            url = (entry.get("download_info") or {}).get("url")
        items.append(
            PlanItem(
                name=name,
                version=str(meta["version"]),
                installed_version=installed_version(name),
                loaded_version=loaded.get(name),
                requested=bool(entry.get("requested")),
                url=url,
            )
        )
    return items


def pip_error_summary(run: pipmod.PipRun) -> str:
    """The lines of pip's output that say what went wrong (ERROR lines first)."""
    errors = [l.strip() for l in run.tail if l.strip().startswith("ERROR")]
    lines = errors or [l.strip() for l in run.tail if l.strip()][-6:]
    return " | ".join(lines[-6:]) or f"pip exited with status {run.returncode} and printed nothing"


def make_plan(
    requirements: Sequence[Req],
    index: pipmod.IndexOptions,
    loaded: dict[str, str],
    *,
    upgrade: bool = False,
    no_deps: bool = False,
    upgrade_strategy: Optional[str] = None,
    constraints: Sequence[str] = (),
    pip_args: Sequence[str] = (),
) -> Plan:
    """Run the dry run(s) and return a Plan; raise InstallFailed when pip cannot plan at all."""
    require_pip()
    pinned = pinnable(loaded)
    flags = (
        (["--upgrade"] if upgrade else [])
        + (["--no-deps"] if no_deps else [])
        + (["--upgrade-strategy", upgrade_strategy] if upgrade_strategy else [])
        + list(pip_args)
    )
    plan = Plan(list(requirements), index, pinned=pinned, pip_args=list(pip_args))
    with tempfile.TemporaryDirectory(prefix="tbkit-plan-") as tmp:
        d = DryRun(requirements, index, flags, _user_constraints_file(constraints, tmp), tmp)
        run, data = _dry_run(d, _constraints_file(pinned, tmp), "pinned")
        if run.ok and data is not None:
            plan.items = _items(data, loaded)
            _judge_pinned(plan, d, loaded, upgrade)
            return plan
        # Pinned resolution failed: is it the pins, or is the requirement impossible anyway?
        free_run, free_data = _dry_run(d, None, "free")
    if free_run.ok and free_data is not None:
        plan.items = _items(free_data, loaded)
        plan.constrained = False
        blocked = plan.loaded_conflicts
        names = ", ".join(f"{i.name} {i.loaded_version} -> {i.version}" for i in blocked) or "a loaded distribution"
        plan.refusal = (
            f"{' '.join(map(str, requirements))} cannot be installed while keeping the loaded "
            f"versions: pip would have to change {names} (pinned: {pip_error_summary(run)})"
        )
        return plan
    raise InstallFailed(
        f"pip could not plan {' '.join(map(str, requirements))} from {index.describe()}: "
        f"{pip_error_summary(free_run)}. Nothing was installed and this environment is unchanged",
        "Check the package name and version, and that the index is reachable (offline? behind a mirror? "
        "pass index_url= / find_links=, or set TBKIT_PIP_INDEX_URL / TBKIT_PIP_FIND_LINKS).",
    )


def _judge_pinned(plan: Plan, d: DryRun, loaded: dict[str, str], upgrade: bool) -> None:
    """The pinned dry run resolved: refuse if it still touches a loaded distribution, or if `-U` of a
    loaded one was only held back by the pin."""
    if plan.loaded_conflicts:
        names = ", ".join(f"{i.name} {i.loaded_version}" for i in plan.loaded_conflicts)
        plan.refusal = (
            f"the plan replaces {names}, loaded in this process; the running code would mix old and new files"
        )
        return
    held = [r for r in d.requirements if upgrade and r.name in plan.pinned]
    if not held:
        return
    # `-U numpy` with NumPy loaded: the pin kept it, so say whether an upgrade was held back.
    free_run, free_data = _dry_run(d, None, "free")
    blocked = [i for i in _items(free_data or {}, loaded) if i.touches_loaded] if free_run.ok else []
    if blocked and free_data is not None:
        plan.items, plan.constrained = _items(free_data, loaded), False
        plan.refusal = (
            "upgrading "
            + ", ".join(f"{i.name} {i.loaded_version} -> {i.version}" for i in blocked)
            + " would replace a distribution loaded in this process"
        )


def refused(plan: Plan) -> InstallRefused:
    """The refusal, said once: what was asked, why not, the plan, and the two ways out."""
    return InstallRefused(
        f"tbkit refused to install {' '.join(map(str, plan.requirements))}: {plan.refusal}. "
        f"The plan was: {'; '.join(i.line() for i in plan.items) or 'nothing'}. Nothing was installed",
        advice(plan),
        plan=plan,
        distributions=[i.name for i in plan.loaded_conflicts],
    )


def advice(plan: Plan) -> str:
    """Name each loaded distribution in the way, its loaded version and what the plan wanted, then the ways out."""
    asked = " ".join(map(str, plan.requirements))
    conflicts = plan.loaded_conflicts
    if not conflicts:
        return f"{restart_hint()} Then install {asked} in the first cell, before anything else is imported."
    wanted = ", ".join(f"{i.name} {i.loaded_version} is loaded and the plan wanted {i.version}" for i in conflicts)
    names = ", ".join(i.name for i in conflicts)
    return (
        f"In conflict: {wanted}. Two ways out: (1) {_keep_loaded(asked, conflicts)}; or (2) {restart_hint()} Then "
        + (f"install {asked} in the first cell, before anything imports {names}.")
    )


def _keep_loaded(asked: str, conflicts: list[PlanItem]) -> str:
    """Way out (1): what to ask for instead so that the loaded versions stay."""
    loaded = ", ".join(f"{i.name} {i.loaded_version}" for i in conflicts)
    if all(i.requested for i in conflicts):  # the request itself names the loaded distribution
        return f"keep the loaded {loaded}: leave it out of the request, or ask for exactly the loaded version"
    pins = " ".join(f'"{i.name}=={i.loaded_version}"' for i in conflicts)
    return f"keep the loaded {loaded}: ask for a version of {asked} that works with it (`pip install {asked} {pins}`)"
