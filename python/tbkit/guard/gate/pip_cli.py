"""pip command lines as pip reads them, turned into what the gate does: plan them, or refuse with the reason.

Two steps:

1. ``shell_command(text)`` reads one shell line the way a shell would (quotes, ``NAME=value``
   prefixes, pipes and ``&&`` as the end of the command) and recognises the launcher: ``pip``,
   ``python -m pip``, ``uv pip``, ``conda``/``mamba``. No pip is involved.
2. ``parse_pip(commands)`` hands the pip arguments to pip's *own* parser, in a child interpreter
   (``pip_parse_child.py`` says why not in this process), which returns every option as pip
   resolved it (``-qU``, ``--opt=value``, abbreviations, ``-r`` files with nested ``-r``/``-c``).
   ``install_request`` then judges each option by its destination in pip's parser: planned (it
   becomes part of the plan), passed on unchanged to both the dry run and the install, or refused
   with the reason. A destination the gate has no rule for (a newer pip) is refused as such.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tbkit.guard.gate.requirements import packaging_modules

PipValue = Any  # a JSON value as the child wrote it


class CannotPlan(Exception):
    """A command the gate cannot turn into a plan; the message is the reason, for the user."""


# ---- 1. the shell line -------------------------------------------------------------------------------
_ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_EXPANSIONS = re.compile(r"[`$]|\{[^}]*\}")  # expanded by IPython or the shell, even inside quotes
_CONDA = re.compile(r"(?:micro)?(?:conda|mamba)")


@dataclass
class ShellCommand:
    """One shell line: its launcher (``pip``, ``uv``, ``conda``, or ``None`` for anything else)."""

    text: str
    launcher: Optional[str]
    args: list[str] = field(default_factory=list)  # after the launcher: ``install -q six``
    env: dict[str, str] = field(default_factory=dict)  # the ``NAME=value`` prefix
    shell_syntax: bool = False  # a pipe, ``&&``, redirection or expansion: the words are not all known

    @property
    def subcommand(self) -> Optional[str]:
        words = [a for a in self.args if not a.startswith("-")]
        return words[0] if words else None


def _tokens(text: str) -> tuple[list[str], bool]:
    try:
        lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError as err:
        raise CannotPlan(f"its quoting cannot be read ({err})") from None
    # An unquoted |, &, ;, <, >, ( or ) comes back as a token of its own: the command ends there.
    ops = [i for i, tok in enumerate(tokens) if tok and all(c in "();<>|&" for c in tok)]
    syntax = bool(ops) or bool(_EXPANSIONS.search(text))
    return (tokens[: ops[0]] if ops else tokens), syntax


def _launcher(tokens: list[str]) -> tuple[Optional[str], list[str]]:
    head = os.path.basename(tokens[0]) if tokens else ""
    if re.fullmatch(r"pip[\d.]*", head):
        return "pip", tokens[1:]
    if re.fullmatch(r"python[\d.]*", head) and tokens[1:3] == ["-m", "pip"]:
        return "pip", tokens[3:]
    if head == "uv" and tokens[1:2] == ["pip"]:
        return "uv", tokens[2:]
    if _CONDA.fullmatch(head):
        return "conda", tokens[1:]
    return None, tokens


def shell_command(text: str) -> ShellCommand:
    """Read one shell line (IPython's ``{sys.executable}`` counts as python)."""
    text = re.sub(r"^\s*\{sys\.executable\}", "python", text)
    tokens, syntax = _tokens(text)
    env: dict[str, str] = {}
    while tokens and _ENV_ASSIGNMENT.match(tokens[0]):
        name, _, value = tokens.pop(0).partition("=")
        env[name] = value
    if tokens[:1] == ["env"]:  # `env NAME=value pip …`
        tokens = tokens[1:]
        while tokens and _ENV_ASSIGNMENT.match(tokens[0]):
            name, _, value = tokens.pop(0).partition("=")
            env[name] = value
    launcher, args = _launcher(tokens)
    return ShellCommand(text, launcher, args, env, syntax)


_PIP_CHANGES = ("install", "uninstall")
_CONDA_CHANGES = ("install", "update", "upgrade", "remove", "uninstall")


def changes_packages(cmd: ShellCommand) -> bool:
    """Would this command change installed packages (and so must go through the gate)?"""
    if cmd.launcher in ("pip", "uv"):
        return any(a in _PIP_CHANGES for a in cmd.args)
    if cmd.launcher == "conda":
        return any(a in _CONDA_CHANGES for a in cmd.args)
    return False


# ---- 2. pip's own parser, in a child interpreter --------------------------------------------------------
@dataclass
class ParsedPip:
    """What pip's parser made of one command line (see pip_parse_child.py for the fields)."""

    command: Optional[str]
    args: list[str] = field(default_factory=list)
    typed: list[dict[str, PipValue]] = field(default_factory=list)
    env_options: list[dict[str, PipValue]] = field(default_factory=list)
    lines: list[dict[str, PipValue]] = field(default_factory=list)
    error: Optional[str] = None
    pip_version: str = ""


_UV_ONLY = ("--system",)  # uv's "install into the interpreter on PATH": the kernel's own here


def pip_argv(cmd: ShellCommand) -> list[str]:
    """The arguments pip itself would receive (``uv pip``: the same words, minus uv's own --system)."""
    return [a for a in cmd.args if not (cmd.launcher == "uv" and a in _UV_ONLY)]


def _without_options(argv: list[str], env: dict[str, str]) -> Optional[ParsedPip]:
    """``pip install six numpy`` — no word starts with ``-`` and no PIP_* variable is set: pip's parser can
    only read the words after the sub-command as requirements, so the answer needs no child process
    (a satisfied ``!pip install six`` then starts no process at all)."""
    if argv[:1] not in (["install"], ["uninstall"]) or any(a.startswith("-") for a in argv):
        return None
    if any(k.startswith("PIP_") for k in env):
        return None
    return ParsedPip(command=argv[0], args=argv[1:])


def parse_pip(commands: list[tuple[list[str], dict[str, str]]], cwd: Optional[str] = None) -> list[ParsedPip]:
    """Parse each ``(pip arguments, environment prefix)`` as pip does; one child for all that need pip's parser."""
    quick = [_without_options(argv, env) for argv, env in commands]
    rest = [c for c, q in zip(commands, quick) if q is None]
    parsed = iter(_parse_in_child(rest, cwd) if rest else [])
    return [q if q is not None else next(parsed) for q in quick]


def _parse_in_child(commands: list[tuple[list[str], dict[str, str]]], cwd: Optional[str]) -> list[ParsedPip]:
    source = Path(__file__).with_name("pip_parse_child.py").read_text(encoding="utf-8")
    request = {"commands": [{"argv": argv, "env": env} for argv, env in commands]}
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE")}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", source],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=cwd,
            env=env,
        )
        data = json.loads(proc.stdout)
    except (OSError, ValueError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", None) or (proc.stderr.strip()[-300:] if "proc" in locals() else str(err))
        raise CannotPlan(f"pip's option parser could not run in this interpreter ({detail or err})") from None
    version = str(data.get("pip", ""))
    return [_parsed(r, version) for r in data["results"]]


def _parsed(raw: dict[str, PipValue], version: str) -> ParsedPip:
    return ParsedPip(
        command=raw.get("command"),
        args=list(raw.get("args") or []),
        typed=list(raw.get("typed") or []),
        env_options=list(raw.get("env_options") or []),
        lines=list(raw.get("lines") or []),
        error=raw.get("error"),
        pip_version=version,
    )


# ---- 3. what the gate does with each option ----------------------------------------------------------
# Options that decide WHAT gets installed become part of the plan (the gate's keyword arguments).
PLANNED = {
    "upgrade": "upgrade the named packages (the plan shows to what)",
    "upgrade_strategy": "how far upgrades reach into dependencies (given to the dry run)",
    "pre": "allow pre-releases",
    "ignore_dependencies": "install without dependencies (--no-deps)",
    "index_url": "the index to plan and install from",
    "extra_index_urls": "an additional index for the plan and the install",
    "find_links": "a local folder or page of links for the plan and the install",
    "no_index": "plan and install from --find-links only",
    "requirements": "the requirements file is read, nested -r/-c included, and every line is planned",
    "constraints": "the constraints are applied to the plan next to the loaded versions",
    "dry_run": "the plan is shown and nothing is installed",
    "quiet": "less output",
    "verbose": "more output",
}
# Options that change HOW pip fetches, builds or reports, not what it picks: passed on unchanged to the
# dry run and to the install of the plan, so both see the same thing.
PASSED_ON = {
    "trusted_hosts",
    "proxy",
    "cert",
    "client_cert",
    "retries",
    "timeout",
    "resume_retries",
    "keyring_provider",
    "cache_dir",
    "prefer_binary",
    "format_control",
    "ignore_requires_python",
    "build_isolation",
    "use_pep517",
    "check_build_deps",
    "config_settings",
    "global_options",
    "build_options",
    "compile",
    "no_clean",
    "force_reinstall",
    "ignore_installed",
    "progress_bar",
    "root_user_action",
    "no_input",
    "disable_pip_version_check",
    "no_color",
    "no_python_version_warning",
    "warn_script_location",
    "warn_about_conflicts",
    "override_externally_managed",
    "exists_action",
    "log",
    "require_venv",
    "isolated_mode",
    "debug_mode",
    "features_enabled",
    "deprecated_features_enabled",
    "use_user_site",  # only --no-user arrives here: --user is refused in refusal()
    "build_constraints",  # pip 25.3 --build-constraint: constrains build dependencies only
}
_WHERE = "the kernel's own environment, whose loaded packages the gate protects"
REFUSED = {
    "editables": "-e installs a project in development mode: its code is imported from a source folder that can "
    "change under the running process at any time, so no plan can say what will be loaded",
    "target_dir": f"--target installs into another folder, outside {_WHERE}; the plan cannot check what lands there",
    "root_path": f"--root installs under another root, outside {_WHERE}",
    "prefix_path": f"--prefix installs under another prefix, outside {_WHERE}",
    "platforms": "--platform selects wheels for another platform (pip allows it only with --target)",
    "python_version": "--python-version selects wheels for another Python (pip allows it only with --target)",
    "implementation": "--implementation selects wheels for another Python (pip allows it only with --target)",
    "abis": "--abi selects wheels for another interpreter (pip allows it only with --target)",
    "src_dir": "--src is where -e checkouts go, and -e cannot be planned",
    "python": "--python makes pip install into another interpreter; the gate protects this kernel's only",
    "require_hashes": "hash-checking mode needs every pin hashed, and the gate installs exact version pins "
    "that carry no hashes",
    "json_report_file": "--report names pip's own report file, and the gate's dry run writes its report there; "
    "use --dry-run to see the plan",
    "dependency_groups": "--group reads requirements from pyproject.toml's dependency groups, which the gate "
    "does not expand; name the packages (or put them in a -r file)",
    "help": "--help prints pip's help (run it without the gate: `%tbkit mode warn`)",
    "version": "--version prints pip's version",
}
_USER_SITE = (
    "--user installs into the user site-packages, which comes before the environment on sys.path and "
    "would shadow loaded packages; the plan is made for the environment itself"
)


def refusal(dest: str, flag: str, value: PipValue, pip_version: str) -> Optional[str]:
    """The reason an option cannot be planned, or None when it can."""
    if dest == "use_user_site":
        return _USER_SITE if value is not False and flag == "--user" else None
    if dest in REFUSED:
        return REFUSED[dest]
    if dest in PLANNED or dest in PASSED_ON:
        return None
    return (
        f"the option {flag} (pip {pip_version}) is one tbkit has no rule for yet, so it cannot say whether it "
        "changes where or what pip installs"
    )


@dataclass
class InstallRequest:
    """A pip install command line, planned: the gate's inputs."""

    requirements: list[str]
    options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of tbkit.guard.gate.prepare
    pip_args: list[str] = field(default_factory=list)  # PASSED_ON options, as typed
    constraints: list[str] = field(default_factory=list)  # from -c files
    env: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False


def _apply_planned(request: InstallRequest, dest: str, value: PipValue) -> None:
    opts = request.options
    if dest in ("upgrade", "pre", "no_index") and value is not False:
        opts[dest] = True
    elif dest == "ignore_dependencies":
        opts["no_deps"] = True
    elif dest == "upgrade_strategy":
        opts["upgrade_strategy"] = str(value)
    elif dest == "index_url" and value:
        opts["index_url"] = str(value)
    elif dest in ("extra_index_urls", "find_links"):
        key = "extra_index_url" if dest == "extra_index_urls" else "find_links"
        values = value if isinstance(value, list) else [value]
        opts.setdefault(key, []).extend(str(v) for v in values if v)
    elif dest == "quiet":
        opts["quiet"] = True
    elif dest == "dry_run":
        request.dry_run = True


def _option_words(entry: dict[str, PipValue]) -> list[str]:
    flag = str(entry["flag"])
    if not entry.get("takes_value"):
        return [flag]
    return [flag, str(entry["value"])]


def _file_line(request: InstallRequest, line: dict[str, PipValue], version: str) -> None:
    where = f"{line['file']} line {line['lineno']}"
    if line.get("editable"):
        raise CannotPlan(f"{where} is `-e {line['requirement']}`: {REFUSED['editables']}")
    for dest, value in (line.get("options") or {}).items():
        if dest in ("hashes", "hash_options"):
            raise CannotPlan(f"{where} has --hash: {REFUSED['require_hashes']}")
        reason = refusal(dest, f"--{dest.replace('_', '-')}", value, version)
        if reason:
            raise CannotPlan(f"{where}: {reason}")
        if dest not in PLANNED:  # pip applies a file's options to the whole run: give them where all can see
            raise CannotPlan(
                f"{where} sets --{dest.replace('_', '-')}; the gate reads the file's lines itself, so give that "
                "option on the command line instead"
            )
        _apply_planned(request, dest, value)
    requirement = _for_this_interpreter(str(line.get("requirement") or ""))
    if requirement:
        (request.constraints if line.get("constraint") else request.requirements).append(requirement)


def _for_this_interpreter(text: str) -> Optional[str]:
    """A requirements-file line with an environment marker (``six; python_version < "3.12"``): pip skips it
    when the marker is false here, and installs it without the marker otherwise — so does the gate."""
    if ";" not in text:
        return text or None
    requirements = packaging_modules()[0]
    try:
        req = requirements.Requirement(text)
    except requirements.InvalidRequirement:
        return text  # the gate's own validation names what is wrong with it
    if req.marker is not None and not req.marker.evaluate():
        return None
    req.marker = None
    return str(req)


def install_request(cmd: ShellCommand, parsed: ParsedPip) -> InstallRequest:
    """Judge every option of a parsed ``pip install``: the request to plan, or CannotPlan with the reason."""
    if parsed.error:
        raise CannotPlan(f"pip itself cannot read it: {parsed.error}")
    request = InstallRequest(requirements=list(parsed.args), env=dict(cmd.env))
    for entry in parsed.env_options:
        dest, flag, value = str(entry["dest"]), str(entry["flag"]), entry["value"]
        reason = refusal(dest, flag, value, parsed.pip_version)
        if reason:
            raise CannotPlan(f"the environment prefix sets {flag} through PIP_*: {reason}")
        if dest in PLANNED:
            _apply_planned(request, dest, value)
    for entry in parsed.typed:
        dest, flag, value = str(entry["dest"]), str(entry["flag"]), entry["value"]
        reason = refusal(dest, flag, value, parsed.pip_version)
        if reason:
            raise CannotPlan(reason if reason.startswith(flag) else f"{flag}: {reason}")
        if dest in PLANNED:
            _apply_planned(request, dest, value)
        else:
            request.pip_args += _option_words(entry)
    for line in parsed.lines:
        _file_line(request, line, parsed.pip_version)
    if not request.requirements:
        raise CannotPlan("no package was named")
    return request


def uninstall_names(parsed: ParsedPip) -> list[str]:
    """The distributions a parsed ``pip uninstall`` removes (names from the command and its -r files)."""
    if parsed.error:
        raise CannotPlan(f"pip itself cannot read it: {parsed.error}")
    names = list(parsed.args) + [str(line["requirement"]) for line in parsed.lines if line.get("requirement")]
    return names


def conda_names(cmd: ShellCommand) -> list[str]:
    """Package names in a conda/mamba command (``numpy=1.26``, ``numpy>=2``): the words that are not options."""
    words, skip = [], False
    for arg in cmd.args[1:]:
        if skip:
            skip = False
        elif arg in ("-c", "--channel", "-n", "--name", "-p", "--prefix", "--file"):
            skip = True
        elif not arg.startswith("-"):
            words.append(re.split(r"[=<>!~ ]", arg, maxsplit=1)[0])
    return words


def shell_quote(words: list[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)
