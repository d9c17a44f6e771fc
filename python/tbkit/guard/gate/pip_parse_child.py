"""Runs in a CHILD interpreter (``sys.executable -c <this file's text>``), never imported by the kernel.

It reads pip command lines (JSON on stdin), parses each with pip's own option parser — the main
parser for global options and the sub-command, the sub-command's parser for its options, pip's
requirements-file parser for ``-r``/``-c`` files with their nested ``-r``/``-c`` — and writes what pip
understood as JSON on stdout. ``tbkit.guard.gate.pip_cli`` decides what the gate does with it.

Why a child process: importing ``pip._internal`` into the kernel would load pip (and its vendored
rich, requests, urllib3…) into the process the gate protects. pip would then count as a loaded
distribution, so a plain ``!pip install -U pip`` would be refused, and the parse itself would run
code from a pip that may be half-replaced on disk. The child costs one interpreter start per cell
that installs something; cells without installs never start it.

Everything here must work with every pip the gate supports (22.2 and newer); attributes that moved
between pip versions are read with ``getattr``.
"""

import contextlib
import io
import json
import os
import sys
from typing import Any

# the current directory may hold a pip.py or a packaging/ folder: never import from it
sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        return sorted(map(str, value)) if isinstance(value, (set, frozenset)) else [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if hasattr(value, "no_binary") and hasattr(value, "only_binary"):  # pip's FormatControl
        return {"no_binary": sorted(value.no_binary), "only_binary": sorted(value.only_binary)}
    return str(value)


def _record_typed(parser: Any, typed: list[dict[str, Any]]) -> None:
    """Wrap each option's ``process`` so the flags as given (after optparse resolves ``-qU`` and
    abbreviations) are recorded in order, with their values."""
    for option in parser._get_all_options():
        if not option.dest:
            continue

        def process(
            opt: str, value: Any, values: Any, p: Any, _option: Any = option, _orig: Any = option.process
        ) -> Any:
            typed.append(
                {"dest": _option.dest, "flag": opt, "value": _jsonable(value), "takes_value": _option.takes_value()}
            )
            return _orig(opt, value, values, p)

        option.process = process


def _from_environment(parser: Any, env: dict[str, str]) -> list[dict[str, Any]]:
    """Options the ``NAME=value`` prefix sets through pip's PIP_* configuration variables."""
    if not any(k.startswith("PIP_") for k in env):
        return []
    base = parser.get_default_values()
    saved = dict(os.environ)
    try:
        os.environ.update(env)
        with_env = parser.get_default_values()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    out: list[dict[str, Any]] = []
    for option in parser._get_all_options():
        dest = option.dest
        if dest and getattr(with_env, dest, None) != getattr(base, dest, None):
            entry = {"dest": dest, "flag": option.get_opt_string(), "value": _jsonable(getattr(with_env, dest, None))}
            if entry not in out and dest not in {e["dest"] for e in out}:
                out.append(entry)
    return out


def _file_lines(filename: str, constraint: bool) -> list[dict[str, Any]]:
    """Every line of a requirements/constraints file (nested -r/-c followed), as pip reads it."""
    from pip._internal.network.session import PipSession
    from pip._internal.req.req_file import RequirementsFileParser, build_parser, get_line_parser

    defaults = build_parser().get_default_values()
    parser = RequirementsFileParser(PipSession(), get_line_parser(None))
    lines = []
    for line in parser.parse(filename, constraint):
        opts = line.opts
        changed = sorted(
            k
            for k, v in vars(opts).items()
            if v not in (None, [], False)
            and v != getattr(defaults, k, None)
            and k not in ("requirements", "constraints")
        )
        lines.append(
            {
                "file": line.filename,
                "lineno": line.lineno,
                "requirement": getattr(line, "requirement", None),
                "editable": bool(getattr(line, "is_editable", False)),
                "constraint": bool(line.constraint),
                "options": {k: _jsonable(getattr(opts, k)) for k in changed if k != "editables"},
            }
        )
    return lines


def parse_one(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    from pip._internal.cli.main_parser import parse_command
    from pip._internal.commands import commands_dict, create_command

    name, rest = parse_command(argv)
    out: dict[str, Any] = {"command": name, "args": [], "typed": [], "env_options": [], "lines": [], "error": None}
    if name not in commands_dict:
        return out
    command = create_command(name, isolated=("--isolated" in rest))
    parser = command.parser
    _record_typed(parser, out["typed"])
    out["env_options"] = _from_environment(parser, env)
    values, args = parser.parse_args(rest)
    out["args"] = list(args)
    for filename in getattr(values, "requirements", None) or []:
        out["lines"] += _file_lines(filename, False)
    for filename in getattr(values, "constraints", None) or []:
        out["lines"] += _file_lines(filename, True)
    return out


def main() -> None:
    request = json.load(sys.stdin)
    os.environ["_PIP_RUNNING_IN_SUBPROCESS"] = "1"  # pip --python must never re-execute from here
    results = []
    for item in request["commands"]:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                results.append(parse_one(item["argv"], item.get("env") or {}))
        except SystemExit:  # optparse's error(): the message went to stderr
            text = err.getvalue().strip().splitlines()
            results.append({"command": None, "error": (text[-1] if text else "pip could not parse it")})
        except Exception as exc:  # pip's own errors (unknown command, unreadable -r file)
            results.append({"command": None, "error": f"{type(exc).__name__}: {exc}"})
    import pip

    json.dump({"pip": pip.__version__, "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
