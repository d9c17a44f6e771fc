"""`tbkit search SOURCE --data FILE|--synthetic --trials N [--storage URL] [--study NAME] [--worker] [--out DIR]`

Hyperparameter search (Optuna) from a shell. With a shared ``--storage`` (PostgreSQL, or any
Optuna RDB URL) one process starts the study and any number of others join it with ``--worker``,
on this machine or others; ``--trials`` is the study's total over all of them. A worker that dies
mid-trial is noticed by its missing heartbeat (``--heartbeat``) and its trial is run again by
another worker (``--max-retry``).

Exit status: 0 when the study has at least one completed trial, 1 when none completed, 2 for
usage or loading errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported in main: only `tbkit search` pays for the training stack
    from tbkit.training.search import SearchResult


def configure(parser: argparse.ArgumentParser) -> None:
    from tbkit.cli.options import add_config_option

    parser.add_argument(
        "source",
        nargs="?",
        default=None,
        help="model: folder, .py file, gist id/URL or bundled example (default: the bundled example)",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--data", metavar="FILE", help="training text file (char-level tokenizer built from it)")
    group.add_argument("--synthetic", action="store_true", help="train on synthetic data (labelled so everywhere)")
    parser.add_argument(
        "--trials", type=int, default=20, help="total trials of the study, over all workers (default 20)"
    )
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage: sqlite:///study.db or postgresql://user@host/db (default: in memory)",
    )
    parser.add_argument("--study", metavar="NAME", default=None, help="study name (default tbkit-search)")
    parser.add_argument(
        "--worker", action="store_true", help="join an existing study in --storage instead of starting one"
    )
    parser.add_argument("--out", metavar="DIR", help="write trials.csv, best_params.json and plots here")
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs per trial; pruning decides after each (default 3)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--max-len", type=int, default=None, help="block length in tokens (default: min(model max, 128))"
    )
    parser.add_argument("--timeout", type=float, default=None, help="stop starting new trials after this many seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda when available)")
    parser.add_argument("--kind", choices=("decoder", "encoder", "seq2seq"), default=None)
    add_config_option(parser)
    parser.add_argument(
        "--path", metavar="DIR", action="append", default=None, help="folder on sys.path for this load (repeatable)"
    )
    dead = parser.add_argument_group("dead workers (needs --storage)")
    dead.add_argument(
        "--heartbeat",
        type=int,
        metavar="SECONDS",
        default=None,
        help="seconds between a running trial's heartbeats (default 60 with --storage; 0 turns them off)",
    )
    dead.add_argument(
        "--grace-period",
        type=int,
        metavar="SECONDS",
        default=None,
        help="a trial without a heartbeat for this long is failed as dead (default: twice --heartbeat)",
    )
    dead.add_argument(
        "--max-retry", type=int, metavar="N", default=None, help="how often a dead trial is run again (default 3)"
    )


def main(args: argparse.Namespace) -> int:
    # imported here: every `tbkit` command builds this parser, only `tbkit search` needs these
    from tbkit.errors import UsageError
    from tbkit.sources import load
    from tbkit.training.search import search

    if args.data is None and not args.synthetic:
        raise UsageError("no training data given", "Pass --data FILE, or --synthetic to try it on synthetic data.")
    model = load(
        args.source, kind=args.kind, config=args.config, path=args.path, log=lambda line: print(line, file=sys.stderr)
    )
    out = Path(args.out) if args.out else None
    result = search(
        model,
        args.data,
        synthetic=args.synthetic,
        n_trials=args.trials,
        storage=args.storage,
        study_name=args.study,
        worker=args.worker,
        timeout=args.timeout,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_len=args.max_len,
        seed=args.seed,
        device=args.device,
        kind=args.kind,
        heartbeat=args.heartbeat,
        grace_period=args.grace_period,
        max_retry=args.max_retry,
    )
    print(result.summary())
    if out is not None:
        _write(out, result)
        print(f"results in {out}")
    return 0 if result.n_complete >= 1 else 1


def _write(out: Path, result: SearchResult) -> None:
    """Each file written whole to a temporary name, then renamed: no half-written results."""
    import os

    out.mkdir(parents=True, exist_ok=True)

    def put(name: str, write: Callable[[Path], object]) -> None:
        tmp = out / f".{name}.tmp"
        write(tmp)
        os.replace(tmp, out / name)

    put("trials.csv", lambda p: result.trials_df.to_csv(p, index=False))
    summary = {
        "study": result.study.study_name,
        "storage": result.storage_display,
        "best_value": result.best_value if result.n_complete else None,
        "best_params": result.best_params,
        "completed": result.n_complete,
        "pruned": result.n_pruned,
        "failed": result.n_failed,
        "retried": result.n_retried,
        "retries": result.retries,
        "heartbeat": result.heartbeat,
        "synthetic": result.synthetic,
        "notes": result.notes,
    }
    put("best_params.json", lambda p: p.write_text(json.dumps(summary, indent=2)))
    for name, fig in result.figures.items():
        put(f"{name}.png", partial(fig.savefig, format="png", dpi=100, bbox_inches="tight"))
