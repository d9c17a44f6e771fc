"""`%load_ext tbkit`: the install gate and the integrity check, wired into IPython.

Three hooks, identical in Colab, Jupyter and VS Code (nothing front-end specific is assumed):

* an input transformer (``input_transformers_cleanup``, so it runs before IPython turns ``!``/``%``
  lines into calls) sees the WHOLE cell. It finds every command that would change packages — ``!pip
  install``, ``%pip install``, ``!python -m pip``, ``!uv pip``, ``!PIP_X=1 pip …`` prefixes, ``pip
  uninstall``, ``conda``/``mamba``, and the same lines inside ``%%bash``/``%%sh``/``%%script bash``
  cells — and plans all of them before any line of the cell runs. In strict mode one refusal
  replaces the cell with the refusal: nothing in it runs. Otherwise each install line is replaced by
  a call that installs exactly its plan (in a shell cell: by a pip command installing the plan's pins).
  A ``pre_run_cell`` hook could only watch; it cannot stop a shell command.
* ``post_run_cell`` (``ip.events``) runs the probe's fast ``integrity.check()``; the first time it says
  a restart is required it shows ONE banner, and from then on the gate refuses every install.
* the ``%tbkit`` line magic (a ``Magics`` class): ``doctor``, ``install PKG…``, ``mode strict|warn``.

Reading pip's command line is the gate's job (tbkit.guard.gate.pip_cli); this module only wires it in.
"""

from __future__ import annotations

import html
import itertools
import re
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

from tbkit.errors import InstallFailed, InstallRefused
from tbkit.guard.gate import pip_cli
from tbkit.guard.gate.pip_cli import CannotPlan, ShellCommand

MODES = ("strict", "warn")
_ESCAPED = re.compile(r"^(?P<indent>[ \t]*)(?P<escape>[!%])(?P<cmd>(?![!%]).*?)(?P<nl>\r?\n?)$", re.S)
_PYTHON_CELL_MAGICS = ("%%capture", "%%time")  # cell magics whose body is still Python
_SHELL_CELL = re.compile(r"^%%(?:bash|sh|script\s+(?:\S*/)?(?:bash|sh))\b")
_KEYWORDS = ("install", "remove", "update", "upgrade")  # cheap test before anything else runs
_CALL = "__import__('tbkit.guard.notebook', fromlist=['_'])"

USAGE = """%tbkit doctor                  is what this kernel has loaded still what is on disk?
%tbkit install PKG... [pip install options, e.g. --dry-run -qU -r FILE --index-url URL]
                               install through the gate (refused if it would break this kernel)
%tbkit mode [strict|warn]      strict (default): refuse unsafe `!pip install` cells; warn: run them after a warning"""


# ---- judging one package command -----------------------------------------------------------------------
@dataclass
class CellCommand:
    """One command of a cell that would change packages, and what the gate decided for it."""

    escape: str  # "!", "%", or "" for a line of a shell cell
    text: str
    action: str = "run"  # install | dry_run | run (the original, unchanged) | refuse
    prepared: Any = None  # tbkit.guard.gate.Prepared for install / dry_run
    refusal: Optional[InstallRefused] = None
    reason: str = ""  # the refusal without its "tbkit refused …:" head, for the cell's one message
    quiet: bool = False
    head: str = ""  # how the gate's own refusals of this command begin

    def refuse(self, err: InstallRefused, head: str = "") -> None:
        self.action, self.refusal = "refuse", err
        text = str(err)
        self.reason = text[len(head) :] if head and text.startswith(head) else text

    label: str = ""  # how the user typed it, when that was not `escape + text` (%tbkit install)

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
    from tbkit.guard.gate import loaded_distributions
    from tbkit.guard.gate.requirements import canonical

    loaded = loaded_distributions()
    wanted = {canonical(re.split(r"[\[<>=!~;@ ]", n, maxsplit=1)[0]) for n in names if n.strip()}
    return sorted((name, version) for name, version in loaded.items() if name in wanted)


def _judge_conda(cmd: ShellCommand, command: CellCommand) -> None:
    from tbkit.guard.gate.runtime import restart_hint

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


def _judge_uninstall(command: CellCommand, parsed: pip_cli.ParsedPip) -> None:
    from tbkit.guard.gate.runtime import restart_hint

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


def _judge_install(cmd: ShellCommand, command: CellCommand, parsed: pip_cli.ParsedPip) -> None:
    from tbkit.guard import gate
    from tbkit.guard.gate.plan import refused

    planned = pip_cli.install_request(cmd, parsed)
    opts = dict(planned.options)
    command.quiet = bool(opts.pop("quiet", False))
    req = gate.request(
        *planned.requirements,
        allow_urls=True,  # typed into the notebook by its user: an explicit request
        allow_paths=True,
        constraints=tuple(planned.constraints),
        pip_args=tuple(planned.pip_args),
        env=planned.env,
        **opts,
    )
    command.head = f"tbkit refused to install {req.text}: "
    command.prepared = gate.prepare(req)
    command.action = "dry_run" if planned.dry_run else "install"
    if not command.prepared.safe and not planned.dry_run:
        command.refuse(refused(command.prepared.plan), command.head)


def judge(commands: list[CellCommand], cwd: Optional[str] = None) -> None:
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


def _judge_pip(cmd: ShellCommand, command: CellCommand, parsed: pip_cli.ParsedPip) -> None:
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


def cell_refusal(commands: list[CellCommand]) -> InstallRefused:
    """One refusal for the whole cell: each refused command once, and that nothing in the cell ran."""
    refused = [c for c in commands if c.action == "refuse" and c.refusal is not None]
    parts = [f"`{c.shown}`: {c.reason}" for c in refused]
    names = [n for c in refused for n in getattr(c.refusal, "distributions", ())]
    plan = next((c.refusal.plan for c in refused if c.refusal is not None and c.refusal.plan is not None), None)
    head = "tbkit refused this cell, so nothing in it ran (" + (
        "one package command" if len(refused) == 1 else f"{len(refused)} package commands"
    )
    return InstallRefused(f"{head} could not be allowed). " + " ".join(parts), plan=plan, distributions=names)


# ---- the cell: finding package commands, and rewriting it -------------------------------------------------
@dataclass
class CellPlan:
    commands: list[CellCommand] = field(default_factory=list)
    shell_magic: Optional[str] = None  # "bash", "sh", "script bash": the first line of a shell cell
    shell_body: list[str] = field(default_factory=list)


def _joined(lines: list[str], i: int, first: str) -> tuple[str, str, int]:
    """A command continued with a trailing backslash, as one line: (text, newline, next index)."""
    cmd, nl, j = first, "\n" if lines[i].endswith("\n") else "", i + 1
    while cmd.rstrip("\r\n").endswith("\\") and j < len(lines):
        cmd = cmd.rstrip("\r\n")[:-1] + " " + lines[j].rstrip("\r\n")
        nl = "\n" if lines[j].endswith("\n") else ""
        j += 1
    return cmd.rstrip("\r\n"), nl, j


def _is_package_command(escape: str, text: str) -> bool:
    if escape == "%" and not re.match(r"^\s*(?:pip|conda|mamba)\s", text):
        return False
    try:
        return pip_cli.changes_packages(pip_cli.shell_command(text))
    except CannotPlan:
        return bool(re.match(r"^\s*(?:\S*/)?(?:pip|python|uv|conda|mamba)", text))  # unreadable quoting


class NotebookGate:
    """The extension's state and hooks; one per IPython shell."""

    def __init__(self, ip: Any) -> None:
        self.ip = ip
        self.mode = "strict"
        self.banner_shown = False
        self.check_broken = False  # the probe itself raised: said once, then quiet
        self.cells: dict[int, CellPlan] = {}
        self._tokens = itertools.count(1)

    # -- the input transformer: must be cheap for every cell that changes no package --
    def transform(self, lines: list[str]) -> list[str]:
        if not any(word in line for line in lines for word in _KEYWORDS):
            return lines
        first = next((line.strip() for line in lines if line.strip()), "")
        if _SHELL_CELL.match(first):
            return self._shell_cell(lines)
        if first.startswith("%%") and not first.startswith(_PYTHON_CELL_MAGICS):
            return lines  # %%writefile, %%html…: not commands
        return self._python_cell(lines)

    transform.has_side_effects = True  # type: ignore[attr-defined]  # IPython's check_complete skips it

    def _python_cell(self, lines: list[str]) -> list[str]:
        found: list[tuple[int, int, str, str, str, str]] = []  # start, end, indent, escape, text, newline
        i = 0
        while i < len(lines):
            m = _ESCAPED.match(lines[i])
            if m:
                text, nl, j = _joined(lines, i, m["cmd"])
                if _is_package_command(m["escape"], text):
                    found.append((i, j, m["indent"], m["escape"], text, nl))
                    i = j
                    continue
            i += 1
        if not found:
            return lines
        cell = CellPlan([CellCommand(escape, text) for _, _, _, escape, text, _ in found])
        token = self._plan(cell)
        if token < 0:
            return [f"{_CALL}.refuse_cell({-token})\n"]
        out, pos = [], 0
        for n, (start, end, indent, _, _, nl) in enumerate(found):
            out += lines[pos:start]
            out.append(f"{indent}{_CALL}.run_command({token}, {n}){nl}")
            pos = end
        return out + lines[pos:]

    def _shell_cell(self, lines: list[str]) -> list[str]:
        head_index = next(i for i, line in enumerate(lines) if line.strip())
        magic = lines[head_index].strip()[2:]
        body = lines[head_index + 1 :]
        cell = CellPlan(shell_magic=magic)
        spans: list[tuple[int, int]] = []
        i = 0
        while i < len(body):
            text, _, j = _joined(body, i, body[i])
            if text.strip() and not text.lstrip().startswith("#") and _is_package_command("", text):
                cell.commands.append(CellCommand("", text))
                spans.append((i, j))
            i = j
        if not cell.commands:
            return lines
        token = self._plan(cell)
        if token < 0:
            return [f"{_CALL}.refuse_cell({-token})\n"]
        out, pos = [], 0
        for n, (start, end) in enumerate(spans):
            out += body[pos:start]
            out.append(shell_replacement(cell.commands[n]) + "\n")
            pos = end
        cell.shell_body = out + body[pos:]
        return [f"{_CALL}.run_shell_cell({token})\n"]

    def _plan(self, cell: CellPlan) -> int:
        """Judge every command; store the cell. A negative token: the cell is refused as a whole."""
        judge(cell.commands)
        token = next(self._tokens)
        self.cells[token] = cell
        for old in [t for t in self.cells if t < token - 64]:  # cells in loops re-run: keep recent ones
            del self.cells[old]
        refused = any(c.action == "refuse" for c in cell.commands)
        return -token if refused and self.mode == "strict" else token

    # -- post_run_cell: the fast probe check, one banner --
    def post_run_cell(self, result: Any = None) -> None:
        if self.banner_shown:
            return
        try:
            from tbkit.guard import integrity

            report = integrity.check()
        except Exception as err:  # the hook must never break the user's cell
            if not self.check_broken:
                self.check_broken = True
                print(
                    f"tbkit: the integrity check failed ({type(err).__name__}: {err}); installs will be "
                    "refused until it works again.",
                    file=sys.stderr,
                )
            return
        if report.restart_required:
            self.banner_shown = True
            show_banner(report)

    # -- registration, through IPython's public lists and events --
    def register(self) -> None:
        if self.transform not in self.ip.input_transformers_cleanup:
            self.ip.input_transformers_cleanup.append(self.transform)
        self.ip.events.register("post_run_cell", self.post_run_cell)
        self.ip.register_magics(TbkitMagics(self.ip, self))

    def unregister(self) -> None:
        if self.transform in self.ip.input_transformers_cleanup:
            self.ip.input_transformers_cleanup.remove(self.transform)
        if self.post_run_cell in self.ip.events.callbacks["post_run_cell"]:
            self.ip.events.unregister("post_run_cell", self.post_run_cell)
        # IPython has no public call that removes a magic; these are the two tables register_magics filled
        self.ip.magics_manager.magics["line"].pop("tbkit", None)
        self.ip.magics_manager.registry.pop("TbkitMagics", None)


def shell_replacement(command: CellCommand) -> str:
    """The shell text that carries out a judged command inside a shell cell."""
    if command.action == "run" or command.prepared is None:
        return command.text
    plan = command.prepared.plan
    if command.action == "dry_run":
        return "printf '%s\\n' " + shlex.quote(str(plan) if plan else "tbkit: already satisfied")
    if plan is None or not plan.items:
        return "echo " + shlex.quote(f"tbkit: {command.prepared.request.text}: already satisfied, nothing installed")
    from tbkit.guard.gate import pip as pipmod

    argv = pipmod.base_argv() + ["--no-deps", *plan.index.args(), *plan.pip_args, *[i.pin() for i in plan.items]]
    env = [f"{k}={shlex.quote(v)}" for k, v in command.prepared.request.env.items()]
    header = "printf '%s\\n' " + shlex.quote(f"{plan}\ntbkit: installing exactly the plan (--no-deps)")
    return f"{header} && {' '.join(env + [pip_cli.shell_quote(argv)])}"


# ---- the magic --------------------------------------------------------------------------------------------
@magics_class
class TbkitMagics(Magics):
    """``%tbkit doctor | install … | mode [strict|warn]``."""

    def __init__(self, shell: Any, gate: NotebookGate) -> None:
        super().__init__(shell)  # type: ignore[no-untyped-call]  # IPython's Magics is not annotated
        self.gate = gate

    @line_magic  # type: ignore[untyped-decorator]
    def tbkit(self, line: str = "") -> None:
        try:
            args = shlex.split(line)
        except ValueError as err:
            raise UsageError(f"tbkit: cannot read the arguments ({err})\n{USAGE}") from None
        if not args or args[0] in ("help", "-h", "--help"):
            print(USAGE)
            return
        cmd, rest = args[0], args[1:]
        if cmd == "doctor":
            doctor(self.gate.mode)
        elif cmd == "mode":
            if rest:
                if rest[0] not in MODES or len(rest) > 1:
                    raise UsageError(f"tbkit: mode must be one of {', '.join(MODES)}")
                self.gate.mode = rest[0]
            print(f"tbkit: install gate mode is {self.gate.mode}")
        elif cmd == "install":
            self._install(line.split("install", 1)[1])
        else:
            raise UsageError(f"tbkit: unknown subcommand {cmd!r}\n{USAGE}")

    def _install(self, rest: str) -> None:
        command = CellCommand("", f"pip install {rest.strip()}", label=f"%tbkit install {rest.strip()}")
        judge([command])
        if command.action == "refuse" and command.refusal is not None:
            raise command.refusal
        _carry_out(command)


def doctor(mode: str) -> None:
    from IPython.display import display

    from tbkit.guard import integrity
    from tbkit.guard.gate.pip import pip_version
    from tbkit.guard.gate.runtime import in_colab

    report = integrity.check()
    bundle = {"text/plain": str(report)}
    if hasattr(report, "_repr_html_"):
        bundle["text/html"] = report._repr_html_()
    display(bundle, raw=True)  # type: ignore[no-untyped-call]
    pip = pip_version()
    print(
        f"tbkit: python {sys.version.split()[0]} at {sys.executable}; pip "
        f"{'.'.join(map(str, pip)) if pip else 'not installed'}; gate mode {mode}; "
        f"front end {'Colab' if in_colab() else 'Jupyter/IPython'}"
    )


def show_banner(report: Any) -> None:
    """The restart banner: one mimebundle, so notebooks render HTML and terminals print text."""
    from tbkit.guard.gate.runtime import restart_hint

    text, rows = banner_text(report)
    hint = restart_hint()
    items = "".join(f"<li><code>{html.escape(r)}</code></li>" for r in rows)
    body = (
        '<div style="border:2px solid #c0392b;border-radius:6px;padding:10px 14px;margin:6px 0;'
        'background:#fdecea;color:#611a15;font-family:sans-serif">'
        "<b>tbkit: restart required.</b> Files of packages loaded in this process changed on disk; "
        "the running code now mixes old and new files and may fail or compute wrong results."
        f"<ul style='margin:6px 0'>{items}</ul>"
        f"<b>{html.escape(hint)}</b><br>Until then tbkit refuses every install.</div>"
    )
    try:
        from IPython.display import display

        display({"text/plain": text, "text/html": body}, raw=True)  # type: ignore[no-untyped-call]
    except Exception:  # no IPython display machinery (plain Python): text is enough
        print(text, file=sys.stderr)


def banner_text(report: Any) -> tuple[str, list[str]]:
    from tbkit.guard.gate import restart_findings
    from tbkit.guard.gate.runtime import restart_hint

    rows = [
        f"{f.distribution}: {f.loaded_version or '?'} loaded, {f.disk_version or 'missing'} on disk — {f.change}"
        for f in restart_findings(report)
    ] or [str(report)]
    text = "\n".join(
        [
            "tbkit: RESTART REQUIRED. Files of packages loaded in this process changed on disk:",
            *(f"  - {r}" for r in rows),
            restart_hint(),
            "Until then tbkit refuses every install.",
        ]
    )
    return text, rows


# ---- what rewritten cells call ------------------------------------------------------------------------------
_GATE: Optional[NotebookGate] = None


def _cell(token: int) -> CellPlan:
    if _GATE is None or token not in _GATE.cells:
        raise InstallRefused(
            "tbkit: this cell was planned by a tbkit extension that is no longer loaded; nothing was run",
            "Run `%load_ext tbkit` and run the cell again.",
        )
    return _GATE.cells[token]


def refuse_cell(token: int) -> None:
    """The whole cell was refused (strict mode): raise the refusal; no line of the cell has run."""
    raise cell_refusal(_cell(token).commands)


def run_command(token: int, index: int) -> None:
    """One package command of a Python cell, as judged when the cell was planned."""
    command = _cell(token).commands[index]
    if command.action == "refuse":  # only in warn mode: strict refused the whole cell
        print(f"tbkit (warn mode): running `{command.shown}` anyway: {command.refusal}", file=sys.stderr)
        _run_original(command)
        return
    if command.action == "run":
        _run_original(command)
        return
    _carry_out(command)


def _carry_out(command: CellCommand) -> None:
    from tbkit.guard import gate

    prepared = command.prepared
    if command.action == "dry_run":
        print(prepared.plan if prepared.plan is not None else f"tbkit: {prepared.request.text}: already satisfied")
        return
    say = gate._say(command.quiet)
    if prepared.plan is not None and prepared.plan.safe:
        say(str(prepared.plan))
    result = gate.carry_out(prepared, say, command.quiet)
    if not command.quiet:
        print(result, flush=True)


def run_shell_cell(token: int) -> None:
    """A shell cell whose package commands were planned: run it with each replaced by its plan's pins."""
    cell = _cell(token)
    for command in cell.commands:
        if command.action == "refuse":  # warn mode
            print(f"tbkit (warn mode): running `{command.shown}` anyway: {command.refusal}", file=sys.stderr)
    from IPython.core.getipython import get_ipython

    name, _, args = (cell.shell_magic or "bash").partition(" ")
    get_ipython().run_cell_magic(name, args, "".join(cell.shell_body))  # type: ignore[no-untyped-call]


def _run_original(command: CellCommand) -> None:
    from IPython.core.getipython import get_ipython

    ip = get_ipython()  # type: ignore[no-untyped-call]
    if command.escape == "%":
        name, _, rest = command.text.strip().partition(" ")
        ip.run_line_magic(name, rest)
    else:
        ip.system(command.text)


def load_ipython_extension(ip: Any) -> None:
    global _GATE
    if _GATE is not None and _GATE.ip is ip:
        return  # %load_ext twice: one set of hooks
    if _GATE is not None:
        _GATE.unregister()
    _GATE = NotebookGate(ip)
    _GATE.register()
    from tbkit.guard import integrity

    sticky = None
    try:
        sticky = integrity.first_restart_report()
    except Exception:
        pass
    print(f"tbkit: install gate on (mode {_GATE.mode}); `%tbkit` for help.")
    if sticky is not None:
        _GATE.banner_shown = True
        show_banner(sticky)
    else:
        _GATE.post_run_cell()


def unload_ipython_extension(ip: Any) -> None:
    global _GATE
    if _GATE is not None and _GATE.ip is ip:
        _GATE.unregister()
        _GATE = None
