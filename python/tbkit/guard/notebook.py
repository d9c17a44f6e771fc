"""`%load_ext tbkit`: the install gate and the integrity check, wired into IPython.

Three hooks, identical in Colab, Jupyter and VS Code (nothing front-end specific is assumed):

* an input transformer (``input_transformers_cleanup``) rewrites each ``!pip install``,
  ``%pip install``, ``!python -m pip install`` and ``!uv pip install`` line into a call to
  ``gate_cell_command`` *before* IPython turns it into a shell call. A ``pre_run_cell`` hook could
  only watch: it cannot stop the shell command from running. Rewritten lines go through the gate;
  in strict mode a refusal raises (the shell command never runs, the rest of the cell is skipped);
  in warn mode the original command runs after the warning. Other cells are returned untouched.
* ``post_run_cell`` runs the probe's fast ``integrity.check()``; the first time it says a restart is
  required it shows ONE banner (a mimebundle: the front end picks HTML or text) and from then on
  the gate refuses every install.
* the ``%tbkit`` line magic: ``doctor``, ``install PKG…``, ``mode strict|warn``.
"""

from __future__ import annotations

import html
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from typing import Optional

from tbkit.errors import InstallRefused

MODES = ("strict", "warn")

_ESCAPED = re.compile(r"^(?P<indent>[ \t]*)(?P<escape>[!%])(?P<cmd>(?![!%]).*?)(?P<nl>\r?\n?)$", re.S)
# The launchers we route: pip/pip3/pip3.11, [path/]python[3[.11]] -m pip, {sys.executable} -m pip, uv pip.
_BANG_INSTALL = re.compile(
    r"^\s*(?:(?:\S*/)?python[\d.]*\s+-m\s+pip|\{sys\.executable\}\s+-m\s+pip|(?:\S*/)?pip[\d.]*|uv\s+pip)\s"
    r".*\binstall\b",
    re.S,
)
_MAGIC_INSTALL = re.compile(r"^\s*pip\s.*\binstall\b", re.S)
_EXPANSIONS = re.compile(r"[`${}]")  # expanded by IPython or the shell, even inside quotes
_PYTHON_CELL_MAGICS = ("%%capture", "%%time")  # cell magics whose body is still Python

USAGE = """%tbkit doctor                  is what this kernel has loaded still what is on disk?
%tbkit install PKG... [--dry-run] [--no-index] [--find-links DIR] [--index-url URL] [-U] [--pre] [-q]
                               install through the gate (refused if it would break this kernel)
%tbkit mode [strict|warn]      strict (default): refuse unsafe `!pip install` cells; warn: run them after a warning"""


# ---- parsing install commands ---------------------------------------------------------------------
class CannotPlan(Exception):
    """The cell's install command is something the gate cannot turn into a plan."""


@dataclass
class CellInstall:
    requirements: list
    options: dict = field(default_factory=dict)  # keyword arguments for tbkit.guard.gate.ensure
    dry_run: bool = False


_GLOBAL_FLAGS = {
    "-q",
    "-qq",
    "-qqq",
    "--quiet",
    "-v",
    "-vv",
    "--verbose",
    "--no-input",
    "--no-color",
    "--disable-pip-version-check",
    "--isolated",
}
_IGNORED_FLAGS = {
    "-v",
    "-vv",
    "--verbose",
    "--no-cache-dir",
    "--no-cache",
    "--no-warn-script-location",
    "--disable-pip-version-check",
    "--no-input",
    "--no-color",
    "--system",
    "--break-system-packages",
    "--no-warn-conflicts",
}
# (`uv pip install --system` is Colab's usual recipe: there the system interpreter is the kernel's own.)
_IGNORED_WITH_VALUE = {"--progress-bar", "--root-user-action", "--timeout", "--retries"}
_VALUE_OPTIONS = {
    "-i": "index_url",
    "--index-url": "index_url",
    "--extra-index-url": "extra_index_url",
    "-f": "find_links",
    "--find-links": "find_links",
}


def parse_install_args(args: list, *, allow_dry_run: bool = False) -> CellInstall:
    """Arguments after ``install`` → requirements and gate options; unknown options are refused."""
    reqs, opts, dry_run = [], {}, False
    it = iter(args)
    for arg in it:
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if arg in ("-q", "-qq", "-qqq", "--quiet"):
            opts["quiet"] = True
        elif arg in _IGNORED_FLAGS:
            continue
        elif name in _IGNORED_WITH_VALUE:
            if not eq:
                next(it, None)
        elif arg in ("-U", "--upgrade"):
            opts["upgrade"] = True
        elif arg == "--pre":
            opts["pre"] = True
        elif arg == "--no-deps":
            opts["no_deps"] = True
        elif arg == "--no-index":
            opts["no_index"] = True
        elif allow_dry_run and arg == "--dry-run":
            dry_run = True
        elif name in _VALUE_OPTIONS:
            value = inline if eq else next(it, None)
            if value is None:
                raise CannotPlan(f"the option {arg} needs a value")
            key = _VALUE_OPTIONS[name]
            if key == "index_url":
                opts[key] = value
            else:
                opts.setdefault(key, []).append(value)
        elif arg.startswith("-"):
            raise CannotPlan(
                f"the pip option {arg} is not one the gate can plan (it understands -q, -U, --pre, "
                "--no-deps, --no-index, --index-url, --extra-index-url, --find-links)"
            )
        else:
            reqs.append(arg)
    if not reqs:
        raise CannotPlan("no package was named")
    return CellInstall(reqs, opts, dry_run)


def looks_like_install(escape: str, cmd: str) -> bool:
    return bool((_BANG_INSTALL if escape == "!" else _MAGIC_INSTALL).match(cmd))


def parse_cell_command(escape: str, cmd: str) -> Optional[CellInstall]:
    """``!``/``%`` command text → CellInstall; None when it is not an install after all
    (``!pip list | grep install``); CannotPlan when it is one the gate cannot read."""
    text = re.sub(r"^\s*\{sys\.executable\}", "python", cmd)
    try:
        lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError as err:
        raise CannotPlan(f"its quoting cannot be read ({err})") from None
    # An unquoted |, &, ;, <, >, ( or ) comes back as a token of its own: the command ends there.
    ops = [i for i, tok in enumerate(tokens) if tok and all(c in "();<>|&" for c in tok)]
    expands = bool(_EXPANSIONS.search(text))
    if ops:
        tokens = tokens[: ops[0]]
    if escape == "%":
        rest = tokens[1:] if tokens[:1] == ["pip"] else None
    elif tokens and re.fullmatch(r"pip[\d.]*", os.path.basename(tokens[0])):
        rest = tokens[1:]
    elif tokens and re.fullmatch(r"python[\d.]*", os.path.basename(tokens[0])) and tokens[1:3] == ["-m", "pip"]:
        rest = tokens[3:]
    elif tokens[:2] == ["uv", "pip"]:
        rest = tokens[2:]
    else:
        rest = None
    while rest and rest[0] in _GLOBAL_FLAGS:
        rest = rest[1:]
    if not rest or rest[0] != "install":
        return None
    if ops or expands:
        raise CannotPlan(
            "it contains shell syntax (a pipe, redirection, `;`, `&&`, `$VAR`, backticks or a "
            "{python} expansion; note that an unquoted `>` in `six>=1` is a redirection), so what "
            "it would install cannot be known in advance"
        )
    return parse_install_args(rest[1:])


# ---- the extension ---------------------------------------------------------------------------------
class Extension:
    def __init__(self, ip) -> None:
        self.ip = ip
        self.mode = "strict"
        self.banner_shown = False
        self.check_broken = False  # the probe itself raised: said once, then quiet

    # registration
    def register(self) -> None:
        if self.transform not in self.ip.input_transformers_cleanup:
            self.ip.input_transformers_cleanup.append(self.transform)
        self.ip.events.register("post_run_cell", self.post_run_cell)
        self.ip.register_magic_function(self.magic, magic_kind="line", magic_name="tbkit")

    def unregister(self) -> None:
        if self.transform in self.ip.input_transformers_cleanup:
            self.ip.input_transformers_cleanup.remove(self.transform)
        try:
            self.ip.events.unregister("post_run_cell", self.post_run_cell)
        except ValueError:
            pass
        self.ip.magics_manager.magics["line"].pop("tbkit", None)

    # the input transformer: must be cheap for every cell that installs nothing
    def transform(self, lines: list) -> list:
        if not any("install" in line for line in lines):
            return lines
        first = next((line.strip() for line in lines if line.strip()), "")
        if first.startswith("%%") and not first.startswith(_PYTHON_CELL_MAGICS):
            return lines  # %%bash, %%writefile…: not Python, and not ours to rewrite
        out, i = [], 0
        while i < len(lines):
            line = lines[i]
            m = _ESCAPED.match(line)
            if not m:
                out.append(line)
                i += 1
                continue
            cmd, nl, j = m["cmd"], m["nl"], i + 1
            while cmd.endswith("\\") and j < len(lines):  # `!pip install a \` continued on the next line
                cmd = cmd[:-1] + " " + lines[j].rstrip("\r\n")
                nl = "\n" if lines[j].endswith("\n") else ""
                j += 1
            if looks_like_install(m["escape"], cmd):
                out.append(
                    f"{m['indent']}__import__('tbkit.guard.notebook', fromlist=['_']).gate_cell_command("
                    f"{m['escape']!r}, {cmd.strip()!r}){nl}"
                )
                i = j
            else:
                out.append(line)
                i += 1
        return out

    # post_run_cell: the fast probe check, one banner
    def post_run_cell(self, result=None) -> None:
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

    # %tbkit
    def magic(self, line: str = ""):
        try:
            args = shlex.split(line)
        except ValueError as err:
            print(f"tbkit: cannot read the arguments ({err})\n{USAGE}", file=sys.stderr)
            return None
        if not args or args[0] in ("help", "-h", "--help"):
            print(USAGE)
            return None
        cmd, rest = args[0], args[1:]
        if cmd == "doctor":
            return self.doctor()
        if cmd == "mode":
            if rest:
                if rest[0] not in MODES or len(rest) > 1:
                    print(f"tbkit: mode must be one of {', '.join(MODES)}", file=sys.stderr)
                    return None
                self.mode = rest[0]
            print(f"tbkit: install gate mode is {self.mode}")
            return None
        if cmd == "install":
            try:
                parsed = parse_install_args(rest, allow_dry_run=True)
            except CannotPlan as err:
                print(f"tbkit: {err}\n{USAGE}", file=sys.stderr)
                return None
            from tbkit.guard.gate import install

            result = install(
                *parsed.requirements, dry_run=parsed.dry_run, allow_urls=True, allow_paths=True, **parsed.options
            )
            if parsed.dry_run:
                print(result)
            return None
        print(f"tbkit: unknown subcommand {cmd!r}\n{USAGE}", file=sys.stderr)
        return None

    def doctor(self):
        from tbkit.guard import integrity
        from tbkit.guard.gate.pip import pip_version
        from tbkit.guard.gate.runtime import in_colab

        report = integrity.check()
        from IPython.display import display

        bundle = {"text/plain": str(report)}
        if hasattr(report, "_repr_html_"):
            bundle["text/html"] = report._repr_html_()
        display(bundle, raw=True)
        pip = pip_version()
        print(
            f"tbkit: python {sys.version.split()[0]} at {sys.executable}; pip "
            f"{'.'.join(map(str, pip)) if pip else 'not installed'}; gate mode {self.mode}; "
            f"front end {'Colab' if in_colab() else 'Jupyter/IPython'}"
        )
        return None


def show_banner(report) -> None:
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

        display({"text/plain": text, "text/html": body}, raw=True)
    except Exception:  # no IPython display machinery (plain Python): text is enough
        print(text, file=sys.stderr)


def banner_text(report):
    findings = [f for f in getattr(report, "findings", ()) if getattr(f, "severity", "") == "restart_required"]
    rows = [
        f"{f.distribution}: {f.loaded_version or '?'} loaded, {f.disk_version or 'missing'} on disk — {f.change}"
        for f in findings
    ] or [str(report)]
    from tbkit.guard.gate.runtime import restart_hint

    text = "\n".join(
        [
            "tbkit: RESTART REQUIRED. Files of packages loaded in this process changed on disk:",
            *(f"  - {r}" for r in rows),
            restart_hint(),
            "Until then tbkit refuses every install.",
        ]
    )
    return text, rows


# ---- what rewritten cells call ----------------------------------------------------------------------
_EXTENSION: Optional[Extension] = None


def gate_cell_command(escape: str, cmd: str) -> None:
    """Run one ``!pip install …`` / ``%pip install …`` line through the gate (see the module doc)."""
    ext = _EXTENSION
    mode = ext.mode if ext is not None else "strict"
    shown = f"{escape}{cmd}"
    try:
        parsed = parse_cell_command(escape, cmd)
    except CannotPlan as err:
        if mode == "strict":
            raise InstallRefused(
                f"tbkit refused the cell command `{shown}`: {err}",
                'Name the packages plainly (`%tbkit install PKG…` or tbkit.install("PKG")), or run '
                "`%tbkit mode warn` to let such commands run unchecked (watch for the restart banner).",
            ) from None
        print(f"tbkit (warn mode): running `{shown}` unchecked: {err}", file=sys.stderr)
        return _run_original(escape, cmd)
    if parsed is None:
        return _run_original(escape, cmd)
    from tbkit.guard.gate import install

    if mode == "strict":
        install(*parsed.requirements, allow_urls=True, allow_paths=True, **parsed.options)
        return None
    try:
        install(*parsed.requirements, allow_urls=True, allow_paths=True, **parsed.options)
    except InstallRefused as err:
        print(f"tbkit (warn mode): the gate would refuse this, running it anyway: {err}", file=sys.stderr)
        return _run_original(escape, cmd)
    return None


def _run_original(escape: str, cmd: str):
    from IPython import get_ipython

    ip = get_ipython()
    if escape == "%":
        name, _, rest = cmd.strip().partition(" ")
        return ip.run_line_magic(name, rest)
    ip.system(cmd)
    return None


def load_ipython_extension(ip) -> None:
    global _EXTENSION
    if _EXTENSION is not None and _EXTENSION.ip is ip:
        return  # %load_ext twice: one set of hooks
    if _EXTENSION is not None:
        _EXTENSION.unregister()
    _EXTENSION = Extension(ip)
    _EXTENSION.register()
    from tbkit.guard import integrity

    sticky = None
    try:
        sticky = integrity.first_restart_report()
    except Exception:
        pass
    print(f"tbkit: install gate on (mode {_EXTENSION.mode}); `%tbkit` for help.")
    if sticky is not None:
        _EXTENSION.banner_shown = True
        show_banner(sticky)
    else:
        _EXTENSION.post_run_cell()


def unload_ipython_extension(ip) -> None:
    global _EXTENSION
    if _EXTENSION is not None and _EXTENSION.ip is ip:
        _EXTENSION.unregister()
        _EXTENSION = None
