"""`tbkit run [SOURCE]`: run the tiered checks and write a report.

Exit codes: 0 PASS/WARN, 1 FAIL/ERROR or a run that did not finish, 2 usage, loading or
environment errors (TbkitError, mapped in cli/__init__.py), 130 / 143 interrupted (SIGINT / SIGTERM).
With --json only the report JSON goes to stdout; provenance, progress and the summary go to stderr.
Everything is checked here without torch; the model then runs in a child process that
``cli/_supervise.py`` watches (``_worker_spec`` is what it is told).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # the checks are imported in main: a wrong path answers before torch loads
    from tbkit.checks.spec import CheckSpec

EPILOG = """\
examples:
  tbkit run                       check the bundled example (tiny_gpt), Tier 1
  tbkit run my_model/ --tier 1,2  a folder with model.py (+ config.json); Tier 2 too
  tbkit run model.py:GPT --json   the report JSON alone on stdout

Tier 1 needs nothing beyond tbkit's own requirements. Tiers 2 and 3 may install packages (Tier 2:
captum; Tier 3: lightning, optuna) through tbkit's install gate, which installs only when the plan
cannot break anything already loaded, and otherwise SKIPs those checks with the reason.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    """Every option of `tbkit run`: the source and how to load it, the checks, Tier 3 training.
    The functions below are the one place where options are defined, group by group."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    _source_options(parser)
    _check_options(parser)
    _convention_options(parser)
    _tier3_options(parser)


def _source_options(parser: argparse.ArgumentParser) -> None:
    from tbkit.cli.options import add_config_option

    parser.add_argument(
        "source",
        nargs="?",
        default=None,
        help="FOLDER (model.py + optional config.json, or a Hugging Face config.json), FILE.py[:Class], "
        "package.module:Class (with --path), CONFIG.json, a gist id or URL, or an example name "
        "(default: the bundled example)",
    )
    source = parser.add_argument_group("model source")
    source.add_argument("--model-name", metavar="NAME", default=None, help="the model class (same as SOURCE:NAME)")
    add_config_option(source)
    source.add_argument(
        "--path",
        metavar="DIR",
        action="append",
        default=None,
        help="folder put on sys.path for this load (repeatable); package.module:Class defaults to the current one",
    )
    source.add_argument(
        "--import-timeout",
        metavar="SECONDS",
        type=float,
        default=None,
        help="limit on loading the model: import, construction and the first forward "
        "(default 60, or $TBKIT_IMPORT_TIMEOUT; 0 = none)",
    )
    source.add_argument(
        "--no-import-guard",
        action="store_true",
        help="run model files even if they train or read data at top level",
    )
    source.add_argument("--revision", default=None, help="gist revision (commit sha) to pin")
    source.add_argument(
        "--sha256",
        default=None,
        metavar="HEX",
        help="refuse to run the model code unless its content sha256 (shown on load) is this",
    )
    source.add_argument("--offline", action="store_true", help="use only cached gist revisions (no network)")


def _check_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tier", default="1", help="tiers to run, comma separated (default 1)")
    parser.add_argument("--checks", default=None, help="only these check ids, comma separated (any tier)")
    parser.add_argument(
        "--kind",
        choices=("decoder", "encoder", "seq2seq"),
        default=None,
        help="model kind (default: config 'kind', else inferred)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda, then mps, then cpu)")
    parser.add_argument("--out", default="tbkit-report", help="output folder (default ./tbkit-report)")
    parser.add_argument("--json", action="store_true", help="print only the report JSON on stdout")
    parser.add_argument("--seed", type=int, default=0, help="seed for every generated input (default 0)")
    parser.add_argument(
        "--memory-budget-mb",
        type=float,
        default=None,
        help="fail the memory check when model + peak activations exceed this many MB (= --option memory.budget_mb=MB)",
    )
    parser.add_argument(
        "--latency-budget-ms",
        type=float,
        default=None,
        help="fail a speed row whose median forward latency exceeds this many ms (= --option speed.latency_budget_ms=MS)",
    )
    parser.add_argument(
        "--option",
        metavar="NAME=VALUE",
        action="append",
        default=None,
        help="set a check's threshold or option ('<check id>.<name>') or a run option (data, max_len, …) for this run; "
        "repeatable; names and types: docs/checks.md",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress (a bar in a terminal, else one line per finished check on stderr)",
    )
    parser.add_argument(
        "--check-timeout",
        metavar="SECONDS",
        type=float,
        default=None,
        help="limit on one check; over it the check is an ERROR row and the run goes on "
        "(default 1800, or $TBKIT_CHECK_TIMEOUT; 0 = none)",
    )


def _convention_options(parser: argparse.ArgumentParser) -> None:
    """Declarations for what tbkit measures about the model's inputs (docs/checks_tier1.md)."""
    conventions = parser.add_argument_group(
        "conventions", "what tbkit measures about the model's inputs; declare one when it cannot be measured"
    )
    conventions.add_argument(
        "--layout",
        choices=("batch_first", "seq_first"),
        default=None,
        help="where the batch dimension is in the model's inputs (= --option layout=...)",
    )
    conventions.add_argument(
        "--mask-convention",
        choices=("int-keep", "bool-keep", "bool-pad", "int-pad", "float-keep", "additive"),
        default=None,
        help="what the attention mask's values mean: dtype and whether True/1 keeps or pads (= --option mask_convention=...)",
    )
    conventions.add_argument(
        "--max-len",
        type=int,
        default=None,
        metavar="N",
        help="the longest input the model accepts, in tokens (= --option max_len=N)",
    )


def _tier3_options(parser: argparse.ArgumentParser) -> None:
    # Tier 3 (train, hpo, baseline) needs data; without --data or --synthetic those checks SKIP
    tier3 = parser.add_argument_group("Tier 3 (training)")
    data = tier3.add_mutually_exclusive_group()
    data.add_argument("--data", metavar="FILE", default=None, help="training text file for train/hpo/baseline")
    data.add_argument("--synthetic", action="store_true", help="train on synthetic data (labelled so in the report)")
    tier3.add_argument("--trials", type=int, default=None, help="hpo: number of trials (default 6; = hpo.trials)")
    tier3.add_argument(
        "--storage",
        metavar="URL",
        default=None,
        help="hpo: Optuna storage, sqlite:///study.db or postgresql://… (default: in memory)",
    )
    # train on several devices / machines (tbkit.train's devices, strategy, num_nodes; docs/tier3.md)
    tier3.add_argument("--devices", type=int, default=None, help="train: devices (processes) per machine")
    tier3.add_argument(
        "--strategy", default=None, help="train: Lightning strategy (default ddp_fork, ddp under torchrun)"
    )
    tier3.add_argument("--num-nodes", type=int, default=None, help="train: number of machines")


def main(args: argparse.Namespace) -> int:
    """Validate everything that can be checked without torch first (a wrong path answers at once),
    then run the model in a supervised child process."""
    from tbkit.checks import report_folder, run_guard
    from tbkit.checks.options import validate_options
    from tbkit.checks.runner import parse_tiers, select_checks
    from tbkit.cli._supervise import supervise
    from tbkit.sources import config_files, resolve, time_limit

    tiers = parse_tiers(args.tier)
    specs = select_checks(tiers, args.checks)  # unknown ids are a usage error before anything loads
    ids = [s.id for s in specs]
    args.options = validate_options(_options(args, ids), ids)  # so are unknown options and bad values
    out = _check_out_dir(args.out)
    _check_data_file(args.data)
    resolve(args.source, model_name=args.model_name, path=args.path)
    config_files.explicit_path(args.config)
    spec = _worker_spec(args, tiers, specs)
    spec["load_timeout"] = time_limit.resolve(args.import_timeout)
    spec["check_timeout"] = run_guard.resolve_timeout(args.check_timeout)
    spec["staging"] = str(report_folder.make_staging(out))
    debug = bool(getattr(args, "debug", False)) or os.environ.get("TBKIT_DEBUG") == "1"
    spec["debug"] = debug
    return supervise(spec, out, args.out, json_out=args.json, progress=not args.no_progress, debug=debug)


def _options(args: argparse.Namespace, check_ids: list[str]) -> dict[str, Any]:
    """The run's options by canonical name: each flag is the spelling of one declared option, and
    ``--option NAME=VALUE`` sets any; the same option given twice is a usage error."""
    from tbkit.checks.options import parse_cli_option
    from tbkit.errors import UsageError

    flags = {
        "memory.budget_mb": ("--memory-budget-mb", args.memory_budget_mb),
        "speed.latency_budget_ms": ("--latency-budget-ms", args.latency_budget_ms),
        "data": ("--data", os.path.abspath(os.path.expanduser(args.data)) if args.data else None),
        "synthetic": ("--synthetic", args.synthetic or None),
        "hpo.trials": ("--trials", args.trials),
        "hpo.storage": ("--storage", args.storage),
        "train.devices": ("--devices", args.devices),
        "train.strategy": ("--strategy", args.strategy),
        "train.num_nodes": ("--num-nodes", args.num_nodes),
        "layout": ("--layout", args.layout),
        "mask_convention": ("--mask-convention", args.mask_convention),
        "max_len": ("--max-len", args.max_len),
    }
    options = {name: value for name, (_, value) in flags.items() if value is not None}
    spelled = {name: flag for name, (flag, value) in flags.items() if value is not None}
    for text in getattr(args, "option", None) or ():
        name, value = parse_cli_option(text, check_ids)
        if name in options:
            raise UsageError(f"option {name!r} is given twice ({spelled[name]} and --option {text})", "Give it once.")
        options[name], spelled[name] = value, f"--option {text}"
    return options


def _check_out_dir(out: str) -> Path:
    """--out must be a folder that exists or can be created; nothing is created here. Returns it
    as an absolute path (resolved before any model code runs, so a chdir changes nothing)."""
    from tbkit.checks.report_folder import resolve_out
    from tbkit.errors import UsageError
    from tbkit.sources.files import what_is

    path = resolve_out(out)
    kind = what_is(path)
    if kind not in ("missing", "a folder"):
        raise UsageError(
            f"--out {out!r} is {kind}, not a folder", "Give a folder for the report (it is created if missing)."
        )
    probe = path
    while what_is(probe) == "missing" and probe.parent != probe:
        probe = probe.parent
    if what_is(probe) != "a folder":
        raise UsageError(
            f"--out {out!r} cannot be created: {probe} is {what_is(probe)}, not a folder",
            "Give a folder path whose parents are folders.",
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(
            f"--out {out!r} cannot be {'written' if probe == path else 'created'}: {probe} is not writable",
            "Give a folder you can write to.",
        )
    plots = path / "plots"
    if os.path.lexists(plots) and not plots.is_symlink() and not plots.is_dir():
        raise UsageError(
            f"--out {out!r} holds a file named 'plots' where the report's plot folder goes",
            "Move that file away, or give another folder for the report.",
        )
    return path


def _check_data_file(data: Optional[str]) -> None:
    from tbkit.errors import UsageError
    from tbkit.sources.files import what_is

    if data is None:
        return
    kind = what_is(Path(data).expanduser())
    if kind != "a regular file":
        raise UsageError(
            f"--data {data!r} is {'missing' if kind == 'missing' else kind}, not a readable text file",
            "Give the training text file (or use --synthetic to try training on synthetic data).",
        )


def _worker_spec(args: argparse.Namespace, tiers: Sequence[int], specs: Sequence[CheckSpec]) -> dict[str, Any]:
    """What the child process is told: plain JSON values, paths absolute (model code may chdir)."""
    options = dict(args.options)
    load_options = {
        k: v
        for k, v in (
            ("revision", args.revision),
            ("expected_sha256", args.sha256),
            ("offline", True if args.offline else None),
            ("model_name", args.model_name),
            ("config", os.path.abspath(args.config) if args.config else None),
            ("path", [os.path.abspath(p) for p in args.path] if args.path else None),
            ("import_timeout", args.import_timeout),
            ("import_guard", False if args.no_import_guard else None),
        )
        if v is not None
    } or None
    return {
        "source": args.source,
        "kind": args.kind,
        "device": args.device,
        "tiers": list(tiers),
        "checks": args.checks,
        "check_tiers": {s.id: s.tier for s in specs},
        "seed": args.seed,
        "options": options,
        "load_options": load_options,
    }
