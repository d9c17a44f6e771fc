"""`tbkit install PKG... [--dry-run]`: the install gate from a shell.

It protects the interpreter it runs in (``sys.executable``); exit status 0 installed or already
satisfied (or, with --dry-run, the plan is safe), 1 refused or pip failed, 2 a bad requirement.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # the gate is imported only when `tbkit install` runs
    from tbkit.errors import TbkitError
    from tbkit.guard.gate.plan import Plan


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("requirements", nargs="+", metavar="PKG", help='requirements, e.g. "captum>=0.9"')
    parser.add_argument("--dry-run", action="store_true", help="show the plan (pip dry run) and change nothing")
    parser.add_argument("--index-url", help="pip index URL (default: pip's configuration, or $TBKIT_PIP_INDEX_URL)")
    parser.add_argument("--extra-index-url", action="append", help="an additional index (repeatable)")
    parser.add_argument(
        "--find-links",
        action="append",
        metavar="DIR_OR_URL",
        help="a local wheel folder or page of links (repeatable; or $TBKIT_PIP_FIND_LINKS)",
    )
    parser.add_argument("--no-index", action="store_true", help="use only --find-links (or $TBKIT_PIP_NO_INDEX=1)")
    parser.add_argument("--pre", action="store_true", help="allow pre-releases")
    parser.add_argument("-U", "--upgrade", action="store_true", help="upgrade requested packages if newer exist")
    parser.add_argument("--allow-urls", action="store_true", help="accept `name @ https://…` and URL requirements")
    parser.add_argument("--allow-paths", action="store_true", help="accept local wheels, archives and folders")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print the plan and pip's progress")


def main(args: argparse.Namespace) -> int:
    # imported here, not at the top: every `tbkit` command builds all subcommands' parsers, and
    # only `tbkit install` should pay for loading the gate
    from tbkit.errors import InstallFailed, InstallRefused
    from tbkit.guard.gate import ensure, plan
    from tbkit.guard.gate.requirements import validate_all

    try:  # a bad requirement is a usage error (exit 2), not a refusal of a plan (exit 1)
        validate_all(args.requirements, allow_urls=args.allow_urls, allow_paths=args.allow_paths)
    except InstallRefused as err:
        if getattr(args, "debug", False):
            raise
        print(_message(err), file=sys.stderr)
        return 2
    options = dict(
        allow_urls=args.allow_urls,
        allow_paths=args.allow_paths,
        index_url=args.index_url,
        find_links=args.find_links,
        no_index=args.no_index,
        extra_index_url=args.extra_index_url,
        pre=args.pre,
        upgrade=args.upgrade,
    )
    try:
        if args.dry_run:
            the_plan = plan(*args.requirements, **options)
            print(the_plan)
            _warn_other_processes(the_plan)
            return 0 if the_plan.safe else 1
        result = ensure(*args.requirements, quiet=args.quiet, **options)
    except (InstallRefused, InstallFailed) as err:
        if getattr(args, "debug", False):
            raise
        print(_message(err), file=sys.stderr)
        return 1
    print(result)
    _warn_other_processes(result.plan)
    return 0


def _message(err: TbkitError) -> str:
    text = str(err)
    return text if text.startswith("tbkit") else f"tbkit: {text}"


def _warn_other_processes(the_plan: Optional[Plan]) -> None:
    """This command only knows its own process: say when the plan replaces installed distributions,
    which any *other* running Python (a notebook kernel) may have imported."""
    replaced = [i for i in getattr(the_plan, "items", ()) if i.action != "new"]
    if replaced:
        names = ", ".join(f"{i.name} {i.installed_version} -> {i.version}" for i in replaced)
        print(
            f"tbkit: note: this replaces installed {names}; a notebook kernel or other Python process that "
            "has imported them must restart afterwards.",
            file=sys.stderr,
        )
