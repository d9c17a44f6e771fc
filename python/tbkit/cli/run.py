"""`tbkit run [SOURCE]`: run the tiered checks and write a report.

Exit codes: 0 PASS/WARN, 1 FAIL/ERROR, 2 usage or loading errors (TbkitError, mapped in cli.py).
With --json only the report JSON goes to stdout; provenance, progress and the summary go to stderr.
"""

from __future__ import annotations

import contextlib
import sys


def configure(parser) -> None:
    parser.add_argument(
        "source",
        nargs="?",
        default=None,
        help="gist id or URL, folder with model.py + config.json, a .py file, or an example name "
        "(default: the bundled example)",
    )
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
    parser.add_argument("--revision", default=None, help="gist revision (commit sha) to pin")
    parser.add_argument(
        "--sha256",
        default=None,
        metavar="HEX",
        help="refuse to run the model code unless its content sha256 (shown on load) is this",
    )
    parser.add_argument("--offline", action="store_true", help="use only cached gist revisions (no network)")
    parser.add_argument("--seed", type=int, default=0, help="seed for every generated input (default 0)")
    parser.add_argument(
        "--memory-budget-mb",
        type=float,
        default=None,
        help="fail the memory check when model + peak activations exceed this many MB",
    )
    parser.add_argument(
        "--latency-budget-ms",
        type=float,
        default=None,
        help="fail a speed row whose median forward latency exceeds this many ms",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    # Tier 3 (train, hpo, baseline) needs data; without --data or --synthetic those checks SKIP
    tier3 = parser.add_argument_group("Tier 3 (training)")
    data = tier3.add_mutually_exclusive_group()
    data.add_argument("--data", metavar="FILE", default=None, help="training text file for train/hpo/baseline")
    data.add_argument("--synthetic", action="store_true", help="train on synthetic data (labelled so in the report)")
    tier3.add_argument("--trials", type=int, default=None, help="hpo: number of trials (default 6)")
    tier3.add_argument(
        "--storage",
        metavar="URL",
        default=None,
        help="hpo: Optuna storage, sqlite:///study.db or postgresql://… (default: in memory)",
    )


def main(args) -> int:
    import tbkit
    from tbkit.checks.base import Status
    from tbkit.checks.runner import parse_tiers, select_checks

    tiers = parse_tiers(args.tier)
    select_checks(tiers, args.checks)  # unknown ids are a usage error before anything loads
    info = sys.stderr if args.json else sys.stdout
    options = {}
    if args.memory_budget_mb is not None:
        options["memory_budget_mb"] = args.memory_budget_mb
    if args.latency_budget_ms is not None:
        options["latency_budget_ms"] = args.latency_budget_ms
    for key, value in (
        ("data", args.data),
        ("synthetic", args.synthetic or None),
        ("hpo_trials", args.trials),
        ("storage", args.storage),
    ):
        if value is not None:
            options[key] = value
    load_options = {
        k: v
        for k, v in (
            ("revision", args.revision),
            ("expected_sha256", args.sha256),
            ("offline", True if args.offline else None),
        )
        if v is not None
    } or None
    # with --json, anything else that writes to stdout (a print in the model's forward, a library)
    # is sent to stderr, so stdout stays one JSON document
    with contextlib.redirect_stdout(info):
        report = tbkit.run(
            args.source,
            tiers=tiers,
            checks=args.checks,
            kind=args.kind,
            device=args.device,
            out_dir=args.out,
            seed=args.seed,
            options=options,
            progress=not args.no_progress,
            stream=info,
            load_options=load_options,
        )
    if args.json:
        print(report.to_json())
    print(report.summary_text(), file=info)
    return 0 if report.verdict in (Status.PASS, Status.WARN) else 1
