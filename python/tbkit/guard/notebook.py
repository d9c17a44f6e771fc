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

Reading pip's command line (tbkit.guard.gate.pip_cli) and deciding each command (tbkit.guard.gate.commands)
are the gate's job; this module finds the commands in a cell and wires the decisions into IPython.
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

from tbkit.errors import InstallRefused
from tbkit.guard import integrity
from tbkit.guard.gate import pip_cli
from tbkit.guard.gate.commands import PackageCommand, carry_out_command, cell_refusal, judge, shell_replacement
from tbkit.guard.gate.pip import pip_version
from tbkit.guard.gate.pip_cli import CannotPlan
from tbkit.guard.gate.runtime import in_colab, restart_hint

MODES = ("strict", "warn")
_ESCAPED = re.compile(r"^(?P<indent>[ \t]*)(?P<escape>[!%])(?P<cmd>(?![!%]).*?)(?P<nl>\r?\n?)$", re.S)
_PYTHON_CELL_MAGICS = ("%%capture", "%%time")  # cell magics whose body is still Python
_SHELL_CELL = re.compile(r"^%%(?:bash|sh|shell|script\s+(?:\S*/)?(?:bash|sh))\b")  # %%shell: Colab's
_KEYWORDS = ("install", "remove", "update", "upgrade")  # cheap test before anything else runs
_CALL = "__import__('tbkit.guard.notebook', fromlist=['_'])"

USAGE = """%tbkit doctor                  is what this kernel has loaded still what is on disk?
%tbkit install PKG... [pip install options, e.g. --dry-run -qU -r FILE --index-url URL]
                               install through the gate (refused if it would break this kernel)
%tbkit mode [strict|warn]      strict (default): refuse unsafe `!pip install` cells; warn: run them after a warning"""


# ---- the cell: finding package commands, and rewriting it -------------------------------------------------
@dataclass
class CellPlan:
    commands: list[PackageCommand] = field(default_factory=list)
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
        self.preexisting_shown = False
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
        cell = CellPlan([PackageCommand(escape, text) for _, _, _, escape, text, _ in found])
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
                cell.commands.append(PackageCommand("", text))
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
        elif report.preexisting_findings and not self.preexisting_shown:
            self.preexisting_shown = True  # older than this process: a restart cannot clear it, so say it once
            print(preexisting_text(report), file=sys.stderr)

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


# ---- the magic --------------------------------------------------------------------------------------------
@magics_class
class TbkitMagics(Magics):
    """``%tbkit doctor | install … | mode [strict|warn]``."""

    def __init__(self, shell: Any, gate: NotebookGate) -> None:
        super().__init__(shell)
        self.gate = gate

    @line_magic
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
        command = PackageCommand("", f"pip install {rest.strip()}", label=f"%tbkit install {rest.strip()}")
        judge([command])
        if command.action == "refuse" and command.refusal is not None:
            raise command.refusal
        carry_out_command(command)


def doctor(mode: str) -> None:
    from IPython.display import display

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
    rows = [
        f"{f.distribution}: {f.loaded_version or '?'} loaded, {f.disk_version or 'missing'} on disk — {f.change}"
        for f in report.restart_findings
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


def preexisting_text(report: Any) -> str:
    """Leftovers older than this process (a crashed pip's stash): named with their removal, no restart."""
    lines = [f"  - {f.distribution}: {f.change}" for f in report.preexisting_findings]
    return "\n".join(
        [
            "tbkit: leftovers from before this session were found (they do not need a restart, and installs stay allowed):",
            *lines,
        ]
    )


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
    carry_out_command(command)


def run_shell_cell(token: int) -> None:
    """A shell cell whose package commands were planned: run it with each replaced by its plan's pins."""
    cell = _cell(token)
    for command in cell.commands:
        if command.action == "refuse":  # warn mode
            print(f"tbkit (warn mode): running `{command.shown}` anyway: {command.refusal}", file=sys.stderr)
    name, _, args = (cell.shell_magic or "bash").partition(" ")
    _shell().run_cell_magic(name, args, "".join(cell.shell_body))


def _shell() -> Any:
    """The running IPython shell; these run only from its hooks, so there is one."""
    from IPython.core.getipython import get_ipython

    ip = get_ipython()
    if ip is None:
        raise RuntimeError("tbkit: no IPython shell is running")
    return ip


def _run_original(command: PackageCommand) -> None:
    ip = _shell()
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
