"""The gate's main flow: validate → already satisfied? → integrity check → plan → refuse, or
install exactly the plan → verify. Its parts (requirements, pip, plan, installed, runtime) never
import from here or from the package ``__init__``, which only re-exports this module's API.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from tbkit.errors import InstallFailed, InstallRefused
from tbkit.guard import integrity
from tbkit.guard.gate import pip as pipmod
from tbkit.guard.gate.installed import installed_version, satisfied, top_level_modules
from tbkit.guard.gate.plan import Plan, make_plan, pip_error_summary, refused
from tbkit.guard.gate.requirements import Req, validate_all
from tbkit.guard.gate.runtime import in_colab, restart_hint

__all__ = [
    "ensure",
    "install",
    "plan",
    "prepare",
    "carry_out",
    "Request",
    "Prepared",
    "InstallResult",
    "Plan",
    "Req",
    "InstallRefused",
    "InstallFailed",
]

Say = Callable[[str], None]
PathList = Union[None, str, list[str]]


@dataclass
class InstallResult:
    """What the gate did. ``installed`` is empty when everything was already satisfied."""

    requirements: list[Req]
    plan: Optional[Plan] = None
    installed: list[str] = field(default_factory=list)  # "name==version" strings
    verified_modules: list[str] = field(default_factory=list)
    integrity: object = None  # the IntegrityReport taken after the install

    @property
    def changed(self) -> bool:
        return bool(self.installed)

    def __str__(self) -> str:
        reqs = " ".join(map(str, self.requirements))
        if not self.installed:
            return f"tbkit: {reqs}: already satisfied, nothing installed"
        mods = f"; imported {', '.join(self.verified_modules)} in a fresh process" if self.verified_modules else ""
        return f"tbkit: installed {', '.join(self.installed)}{mods}; the running process is intact"


@dataclass(frozen=True)
class Request:
    """Validated requirements and every setting that shapes their plan. ``pip_args``, ``constraints`` and
    ``env`` come only from tbkit.guard.gate.pip_cli, which has judged each option with pip's own parser."""

    requirements: tuple[Req, ...]
    index: pipmod.IndexOptions
    upgrade: bool = False
    no_deps: bool = False
    upgrade_strategy: Optional[str] = None
    constraints: tuple[str, ...] = ()
    pip_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return " ".join(map(str, self.requirements))

    @property
    def may_skip_pip(self) -> bool:
        """Satisfied name requirements answer without pip, unless something asks pip to look again."""
        return not (self.upgrade or self.constraints or self.pip_args) and all(
            r.kind == "name" and satisfied(r) for r in self.requirements
        )


@dataclass
class Prepared:
    """A request after the checks and the dry run: ``plan`` is None when nothing needs installing."""

    request: Request
    plan: Optional[Plan]
    loaded: dict[str, str]

    @property
    def safe(self) -> bool:
        return self.plan is None or self.plan.safe


def request(
    *requirements: object,
    allow_urls: bool = False,
    allow_paths: bool = False,
    index_url: Optional[str] = None,
    find_links: PathList = None,
    no_index: bool = False,
    extra_index_url: PathList = None,
    pre: bool = False,
    upgrade: bool = False,
    no_deps: bool = False,
    **internal: Any,
) -> Request:
    """Validate requirements and options into a Request (raises InstallRefused, before any process starts)."""
    reqs = validate_all(requirements, allow_urls=allow_urls, allow_paths=allow_paths)
    index = pipmod.IndexOptions.resolve(
        index_url=index_url, find_links=find_links, no_index=no_index, extra_index_url=extra_index_url, pre=pre
    )
    return Request(tuple(reqs), index, upgrade=upgrade, no_deps=no_deps, **internal)


def _restart_refusal(report: Any, what: str) -> InstallRefused:
    """The process already mixes old and new files: nothing may be installed until it restarts."""
    findings = report.restart_findings
    names = [f.distribution for f in findings]
    detail = "; ".join(
        f"{f.distribution} {f.loaded_version} is loaded but {f.disk_version or 'nothing'} is on disk ({f.change})"
        for f in findings
    ) or str(report)
    where = "Colab session" if in_colab() else "process"
    return InstallRefused(
        f"tbkit refused to install {what}: this {where} must restart first, because files of loaded "
        f"distributions changed on disk — {detail}. Until it restarts, every install is refused, since "
        "each one would build on a broken state",
        restart_hint(),
        distributions=names,
    )


def check_process(what: str) -> Any:
    """Refuse when the probe says (now, or at any earlier point) that a restart is required."""
    sticky = integrity.first_restart_report()
    if sticky is not None:
        raise _restart_refusal(sticky, what)
    try:
        report = integrity.check()
    except Exception as err:  # without the check the gate would install blind: refuse instead
        raise InstallRefused(
            f"tbkit refused to install {what}: the integrity check failed ({type(err).__name__}: {err}), so it "
            "cannot tell whether this process is still intact; nothing was installed",
            "Run `tbkit doctor` (or `%tbkit doctor`) and report its output.",
        ) from None
    if report.restart_required:
        raise _restart_refusal(report, what)
    return report


def loaded_distributions() -> dict[str, str]:
    """What must not change under us; without it there is no safe plan, so the gate refuses."""
    try:
        return dict(integrity.loaded_distributions())
    except Exception as err:  # the probe could not start: installing blind is what the gate exists to prevent
        raise InstallRefused(
            f"tbkit cannot tell which distributions this process has loaded (the integrity probe failed: "
            f"{type(err).__name__}: {err}), so it cannot plan an install that keeps them; nothing was installed",
            "Run `tbkit doctor` (or `%tbkit doctor`) and report its output; meanwhile install what you need "
            "before importing anything, in a fresh process.",
        ) from None


def prepare(req: Request) -> Prepared:
    """Everything before the install: the process check, the satisfied answer, the dry run and its verdict.
    Raises InstallRefused when the process must restart; the returned plan may carry a refusal."""
    check_process(req.text)  # refuse in a broken process even when nothing is needed: the caller will import
    with pipmod.extra_env(req.env):
        if req.may_skip_pip:
            return Prepared(req, None, {})
        loaded = loaded_distributions()
        the_plan = make_plan(
            req.requirements,
            req.index,
            loaded,
            upgrade=req.upgrade,
            no_deps=req.no_deps,
            upgrade_strategy=req.upgrade_strategy,
            constraints=req.constraints,
            pip_args=req.pip_args,
        )
    return Prepared(req, the_plan, loaded)


def carry_out(prepared: Prepared, say: Say, quiet: bool = False) -> InstallResult:
    """Install exactly a safe plan (raise its refusal otherwise) and verify it."""
    req, the_plan = prepared.request, prepared.plan
    if the_plan is None:
        return InstallResult(list(req.requirements))
    if not the_plan.safe:
        raise refused(the_plan)
    if not the_plan.items:
        return InstallResult(list(req.requirements), the_plan)
    newly_loaded = [i for i in the_plan.items if i.loaded_version is None and i.name in loaded_now()]
    if newly_loaded:  # imported between the plan and now (an earlier line of the same cell)
        names = ", ".join(i.name for i in newly_loaded)
        raise InstallRefused(
            f"tbkit refused to install {req.text}: {names} got imported after the plan was made, and the plan "
            f"replaces it; nothing was installed",
            f"Install {req.text} before importing {names}, or {restart_hint()}",
            distributions=[i.name for i in newly_loaded],
        )
    with pipmod.extra_env(req.env):
        return _execute(list(req.requirements), the_plan, say, quiet)


def loaded_now() -> dict[str, str]:
    try:
        return loaded_distributions()
    except InstallRefused:
        return {}


def plan(*requirements: object, **options: Any) -> Plan:
    """The plan the gate would carry out (a pip dry run), with ``.refusal`` set if it would refuse.

    Takes ensure()'s keyword arguments. Raises InstallRefused for bad requirements or a process that
    must restart, InstallFailed when pip cannot plan at all."""
    options.pop("quiet", None)
    req = request(*requirements, **options)
    check_process(req.text)
    with pipmod.extra_env(req.env):
        return make_plan(
            req.requirements,
            req.index,
            loaded_distributions(),
            upgrade=req.upgrade,
            no_deps=req.no_deps,
            upgrade_strategy=req.upgrade_strategy,
            constraints=req.constraints,
            pip_args=req.pip_args,
        )


def ensure(
    *requirements: object,
    allow_urls: bool = False,
    allow_paths: bool = False,
    index_url: Optional[str] = None,
    find_links: PathList = None,
    no_index: bool = False,
    quiet: bool = False,
    extra_index_url: PathList = None,
    pre: bool = False,
    upgrade: bool = False,
    no_deps: bool = False,
) -> InstallResult:
    """Make ``requirements`` importable without breaking this process, or raise saying why not."""
    req = request(
        *requirements,
        allow_urls=allow_urls,
        allow_paths=allow_paths,
        index_url=index_url,
        find_links=find_links,
        no_index=no_index,
        extra_index_url=extra_index_url,
        pre=pre,
        upgrade=upgrade,
        no_deps=no_deps,
    )
    return run_request(req, quiet=quiet)


def run_request(req: Request, *, quiet: bool = False) -> InstallResult:
    """prepare + carry_out, printing the plan when it is safe (a refusal carries the plan, said once)."""
    say = printer(quiet)
    prepared = prepare(req)
    if prepared.plan is not None and prepared.plan.safe:
        say(str(prepared.plan))
    return carry_out(prepared, say, quiet)


def printer(quiet: bool) -> Say:
    """Where the gate says what it does: stdout, flushed (progress in a notebook), or nowhere."""

    def say(line: str) -> None:
        if not quiet:
            print(line, flush=True)

    return say


def install(*requirements: object, dry_run: bool = False, **options: Any) -> Union[InstallResult, Plan]:
    """The same gate as ``ensure``, for explicit use: prints what it decided even when nothing was needed.
    With ``dry_run=True`` returns the Plan and changes nothing."""
    if dry_run:
        return plan(*requirements, **options)
    result = ensure(*requirements, **options)
    if not options.get("quiet"):
        print(result, flush=True)
    return result


def _execute(reqs: list[Req], the_plan: Plan, say: Say, quiet: bool) -> InstallResult:
    pins = [item.pin() for item in the_plan.items]
    argv = pipmod.base_argv() + [
        "--no-deps",
        *the_plan.index.args(),
        *the_plan.pip_args,
        *(["--quiet"] if quiet else []),
        *pins,
    ]
    say(f"tbkit: installing exactly the plan ({len(pins)} distribution{'s' * (len(pins) != 1)}, --no-deps)")
    echo = None if quiet else (lambda line: print(f"  pip: {line}", flush=True))
    run = pipmod.run_streamed(argv, echo=echo, index=the_plan.index)
    importlib.invalidate_caches()
    report = integrity.check()
    if not run.ok:
        raise _pip_failed(the_plan, pins, run, report)
    if report.restart_required:
        raise InstallFailed(
            f"the install of {', '.join(pins)} changed distributions loaded in this process although the plan "
            f"did not include them: {report}",
            restart_hint(),
        )
    modules = sorted({m for item in the_plan.items for m in top_level_modules(item.name)})
    _import_in_fresh_process(modules, pins)
    installed = [f"{i.name}=={i.version}" for i in the_plan.items]
    return InstallResult(reqs, the_plan, installed, modules, report)


def _pip_failed(the_plan: Plan, pins: list[str], run: pipmod.PipRun, report: Any) -> InstallFailed:
    landed = [
        f"{i.name}=={i.version}"
        for i in the_plan.items
        if installed_version(i.name) == i.version and i.installed_version != i.version
    ]
    state = (
        "the running process is still intact"
        if not report.restart_required
        else f"the running process is now damaged ({report})"
    )
    partial = f"; of the plan, {', '.join(landed)} did get installed" if landed else "; none of the plan got installed"
    return InstallFailed(
        f"pip failed while installing {', '.join(pins)} (exit status {run.returncode}): "
        f"{_summary(run)}{partial}; {state}",
        "Read pip's message above; the plan itself was checked against the loaded packages, so this is "
        "usually a download, build or packaging problem."
        + (
            f" Remove the partial install with `{sys.executable} -m pip uninstall -y "
            f"{' '.join(n.split('==')[0] for n in landed)}`."
            if landed
            else ""
        )
        + (" " + restart_hint() if report.restart_required else ""),
    )


def _summary(run: pipmod.PipRun) -> str:
    return pip_error_summary(run)


_IMPORT_CHECK = """
import importlib, json, sys, traceback
failed = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except BaseException as err:
        failed[name] = traceback.format_exception_only(type(err), err)[-1].strip()
print(json.dumps(failed))
"""


def _import_in_fresh_process(modules: list[str], pins: list[str]) -> None:
    """Import the new top-level modules in a child interpreter before anything imports them here."""
    if not modules:
        return
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK, *modules],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    try:
        failed = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        failed = {"(interpreter)": f"exit status {proc.returncode}: {proc.stderr.strip()[-500:]}"}
    if failed:
        detail = "; ".join(f"import {name} -> {err}" for name, err in failed.items())
        raise InstallFailed(
            f"{', '.join(pins)} installed, but a fresh Python process could not import it: {detail}. "
            "Nothing has imported it in this process, which is still intact",
            "The installed package is broken or needs something missing; fix or uninstall it "
            "(python -m pip uninstall NAME) before importing it here.",
        )
