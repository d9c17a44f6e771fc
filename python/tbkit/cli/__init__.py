"""The `tbkit` command. Each subcommand lives in `tbkit.cli.<name>` and exposes
``configure(parser)`` and ``main(args) -> int``; what a subcommand needs beyond its options
(torch, the model sources) is imported in its ``main``, so `tbkit doctor` never pays for torch.

Exit codes shared by all subcommands: 0 success (PASS/WARN), 1 the thing checked failed,
2 usage or loading errors.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType

from tbkit._probe import __version__  # compiled from rust/probe/Cargo.toml: the one version
from tbkit.errors import TbkitError

COMMANDS = {
    "run": "run the tiered checks on a model and write a report",
    "doctor": "is what this interpreter has loaded still what is on disk, and is tbkit installed whole? (plus facts for bug reports)",
    "install": "install packages through the gate that refuses anything that would break this process",
    "search": "hyperparameter search (Optuna) on a model; several workers can share one study",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tbkit", description="Check and train transformer models safely.")
    parser.add_argument("--version", action="version", version=f"tbkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=f"tbkit.cli.{name}")
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        _command_module(name).configure(p)
    return parser


def _command_module(name: str) -> ModuleType:
    return importlib.import_module(f"tbkit.cli.{name}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    debug = args.debug or os.environ.get("TBKIT_DEBUG") == "1"
    try:
        return int(importlib.import_module(args._module).main(args) or 0)
    except TbkitError as err:
        if debug:  # the traceback as well, never another exit code
            import traceback

            traceback.print_exc()
        print(f"tbkit: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tbkit: interrupted; finished results were kept.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
