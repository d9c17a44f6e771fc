"""The package commands of one notebook cell, judged by the gate before any of them runs.

Each command (``!pip install …``, a ``%%bash`` line, ``!conda install …``) becomes a ``PackageCommand``
with an action: ``install`` (a safe plan), ``dry_run`` (show the plan), ``run`` (runs as typed: it cannot
break this process, e.g. uninstalling something never imported), or ``refuse`` (with the reason, said once
in ``cell_refusal``). tbkit.guard.notebook finds the commands in a cell and wires these decisions into IPython.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from typing import Any, Optional

from tbkit.errors import InstallFailed, InstallRefused
from tbkit.guard.gate import flow, pip_cli
from tbkit.guard.gate import pip as pipmod
from tbkit.guard.gate.pip_cli import CannotPlan, ShellCommand
from tbkit.guard.gate.plan import refused
from tbkit.guard.gate.requirements import canonical
from tbkit.guard.gate.runtime import restart_hint


@dataclass
class PackageCommand:
    """One command of a cell that would change packages, and what the gate decided for it."""

    escape: str  # "!", "%", or "" for a line of a shell cell
    text: str
    action: str = "run"  # install | dry_run | run (the original, unchanged) | refuse
    prepared: Any = None  # tbkit.guard.gate.flow.Prepared for install / dry_run
    refusal: Optional[InstallRefused] = None
    reason: str = ""  # the refusal without its "tbkit refused …:" head, for the cell's one message
    quiet: bool = False
    head: str = ""  # how the gate's own refusals of this command begin
    label: str = ""  # how the user typed it, when that was not `escape + text` (%tbkit install)

    def refuse(self, err: InstallRefused, head: str = "") -> None:
        self.action, self.refusal = "refuse", err
        text = str(err)
        self.reason = text[len(head) :] if head and text.startswith(head) else text

    @property
    def shown(self) -> str:
        return self.label or f"{self.escape}{self.text.strip()}"


def _cannot_plan(shown: str, reason: str) -> InstallRefused:
    return InstallRefused(
        f"tbkit cannot plan `{shown}`: {reason}; nothing was installed",
        'Name the packages plainly (`!pip install PKG…`, `%tbkit install PKG…` or tbkit.install("PKG")), or run '
        "`%tbkit mode warn` to let such commands run unchecked (watch for the restart banner).",
    )


def _loaded_among(names: list[str]) -> list[tuple[str, str]]:
    loaded = flow.loaded_distributions()
    wanted = {canonical(re.split(r"[\[<>=!~;@ ]", n, maxsplit=1)[0]) for n in names if n.strip()}
    return sorted((name, version) for name, version in loaded.items() if name in wanted)


def _judge_conda(cmd: ShellCommand, command: PackageCommand) -> None:
    hits = _loaded_among(pip_cli.conda_names(cmd))
    touched = ", ".join(f"{n} {v}" for n, v in hits)
    why = (
        f"it would change {touched}, loaded in this process" if hits else "tbkit cannot plan conda/mamba commands"
    ) + (
        "; conda resolves on its own and may replace any package (compiled libraries and Python's own included) "
        "with no dry run the gate can read"
    )
    head = f"tbkit refused `{command.shown}`: "
    err = InstallRefused(
        f"{head}{why}",
        f"Two ways out: install with pip through the gate (`!pip install …`); or restart — {restart_hint()} Then "
        "run the conda command first, before anything is imported (or `%tbkit mode warn` to run it unchecked).",
        distributions=[n for n, _ in hits],
    )
    command.refuse(err, head)


def _judge_uninstall(command: PackageCommand, parsed: pip_cli.ParsedPip) -> None:
    hits = _loaded_among(pip_cli.uninstall_names(parsed))
    if not hits:
        return  # removing what this process never imported cannot break it: runs as typed
    names = ", ".join(f"{n} {v}" for n, v in hits)
    head = f"tbkit refused `{command.shown}`: "
    err = InstallRefused(
        f"{head}it removes {names}, loaded in this process, whose running code would then refer to files "
        "that are gone; nothing was uninstalled",
        f"Two ways out: keep {', '.join(n for n, _ in hits)} while this process uses it; or restart — "
        f"{restart_hint()} Then uninstall it first, before anything imports it.",
        distributions=[n for n, _ in hits],
    )
    command.refuse(err, head)


def _judge_install(cmd: ShellCommand, command: PackageCommand, parsed: pip_cli.ParsedPip) -> None:
    planned = pip_cli.install_request(cmd, parsed)
    opts = dict(planned.options)
    command.quiet = bool(opts.pop("quiet", False))
    req = flow.request(
        *planned.requirements,
        allow_urls=True,  # typed into the notebook by its user: an explicit request
        allow_paths=True,
        constraints=tuple(planned.constraints),
        pip_args=tuple(planned.pip_args),
        env=planned.env,
        **opts,
    )
    command.head = f"tbkit refused to install {req.text}: "
    command.prepared = flow.prepare(req)
    command.action = "dry_run" if planned.dry_run else "install"
    if not command.prepared.safe and not planned.dry_run:
        command.refuse(refused(command.prepared.plan), command.head)


def judge(commands: list[PackageCommand], cwd: Optional[str] = None) -> None:
    """Decide every package command of a cell; pip's parser runs once for all of them."""
    shells: list[Optional[ShellCommand]] = []
    for command in commands:
        try:
            shells.append(pip_cli.shell_command(command.text))
        except CannotPlan as err:
            command.refuse(_cannot_plan(command.shown, str(err)), f"tbkit cannot plan `{command.shown}`: ")
            shells.append(None)
    pip_lines = [(c, s) for c, s in zip(commands, shells) if s is not None and s.launcher in ("pip", "uv")]
    parsed = pip_cli.parse_pip([(pip_cli.pip_argv(s), s.env) for _, s in pip_lines], cwd=cwd) if pip_lines else []
    for (command, cmd), result in zip(pip_lines, parsed):
        _judge_pip(cmd, command, result)
    for command, shell in zip(commands, shells):
        if shell is not None and shell.launcher == "conda":
            _judge_conda(shell, command)


def _judge_pip(cmd: ShellCommand, command: PackageCommand, parsed: pip_cli.ParsedPip) -> None:
    try:
        if parsed.command in ("install", "uninstall") and cmd.shell_syntax:
            raise CannotPlan(
                "it contains shell syntax (a pipe, redirection, `;`, `&&`, `$VAR`, backticks or a {python} "
                "expansion; an unquoted `>` in `six>=1` is a redirection), so what it would install cannot "
                "be known in advance"
            )
        if parsed.command == "install" or (parsed.command is None and parsed.error):
            _judge_install(cmd, command, parsed)
        elif parsed.command == "uninstall":
            _judge_uninstall(command, parsed)
    except CannotPlan as err:
        command.refuse(_cannot_plan(command.shown, str(err)), f"tbkit cannot plan `{command.shown}`: ")
    except InstallRefused as err:
        command.refuse(err, command.head)
    except InstallFailed as err:  # pip cannot plan it at all (unknown package, index unreachable)
        command.refuse(InstallRefused(err.cause, err.fix))


def cell_refusal(commands: list[PackageCommand]) -> InstallRefused:
    """One refusal for the whole cell: each refused command once, and that nothing in the cell ran."""
    refused = [c for c in commands if c.action == "refuse" and c.refusal is not None]
    parts = [f"`{c.shown}`: {c.reason}" for c in refused]
    names = [n for c in refused for n in getattr(c.refusal, "distributions", ())]
    plan = next((c.refusal.plan for c in refused if c.refusal is not None and c.refusal.plan is not None), None)
    head = "tbkit refused this cell, so nothing in it ran (" + (
        "one package command" if len(refused) == 1 else f"{len(refused)} package commands"
    )
    return InstallRefused(f"{head} could not be allowed). " + " ".join(parts), plan=plan, distributions=names)


def shell_replacement(command: PackageCommand) -> str:
    """The shell text that carries out a judged command inside a shell cell."""
    if command.action == "run" or command.prepared is None:
        return command.text
    plan = command.prepared.plan
    if command.action == "dry_run":
        return "printf '%s\\n' " + shlex.quote(str(plan) if plan else "tbkit: already satisfied")
    if plan is None or not plan.items:
        return "echo " + shlex.quote(f"tbkit: {command.prepared.request.text}: already satisfied, nothing installed")
    argv = pipmod.base_argv() + ["--no-deps", *plan.index.args(), *plan.pip_args, *[i.pin() for i in plan.items]]
    env = [f"{k}={shlex.quote(v)}" for k, v in command.prepared.request.env.items()]
    env += [_index_assignment(k, v) for k, v in plan.index.env().items()]
    header = "printf '%s\\n' " + shlex.quote(f"{plan}\ntbkit: installing exactly the plan (--no-deps)")
    return f"{header} && {' '.join(env + [pip_cli.shell_quote(argv)])}"


def _index_assignment(name: str, url: str) -> str:
    """An index URL with credentials for the command's environment: taken from the variable it came
    from when it did (the secret is then not in the command text, which ``ps`` shows)."""
    for source in ("TBKIT_PIP_INDEX_URL", name):
        if os.environ.get(source) == url:
            return f'{name}="${source}"'
    return f"{name}={shlex.quote(url)}"


def carry_out_command(command: PackageCommand) -> None:
    """Carry out an ``install`` or ``dry_run`` command in this process (plan shown, exact install, verified)."""
    prepared = command.prepared
    if command.action == "dry_run":
        print(prepared.plan if prepared.plan is not None else f"tbkit: {prepared.request.text}: already satisfied")
        return
    say = flow.printer(command.quiet)
    if prepared.plan is not None and prepared.plan.safe:
        say(str(prepared.plan))
    result = flow.carry_out(prepared, say, command.quiet)
    if not command.quiet:
        print(result, flush=True)
