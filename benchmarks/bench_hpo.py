"""Hyperparameter-search throughput: one worker against two workers sharing one study, same run.

Each configuration creates a fresh study in the same storage, starts its workers as real
`tbkit search --worker` processes (one torch thread each, so the comparison is about workers,
not threads), and reads the trials' own start/complete timestamps back from the storage:
throughput = trials / (last completion - first start), so interpreter start-up is not counted.
Also epochs/s, since pruned trials are shorter. Prints medians over --repeats and the
two-worker / one-worker ratio (2.0 = perfect scaling; on
a machine with fewer free cores than workers expect less). Workers run with tbkit's default
heartbeat (every 60 s with a shared storage); --heartbeat 0 turns it off, --heartbeat 1 shows
its cost at its most frequent. No GPU was lent to this task: trials train on the CPU.

    python benchmarks/bench_hpo.py                       # SQLite file in a temp dir
    python benchmarks/bench_hpo.py --postgres            # a throwaway PostgreSQL (Debian's) on 127.0.0.1
    python benchmarks/bench_hpo.py --storage postgresql://user@host/db
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_study(storage: str, workers: int, trials: int, epochs: int, heartbeat=None) -> dict:
    import optuna

    from tbkit.training.search import _with_driver

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = f"bench-{workers}w-{uuid.uuid4().hex[:8]}"
    direct = _with_driver(storage)
    optuna.create_study(study_name=name, storage=direct, direction="minimize")
    argv = [
        sys.executable,
        "-m",
        "tbkit",
        "search",
        "tiny_gpt",
        "--synthetic",
        "--trials",
        str(trials),
        "--epochs",
        str(epochs),
        "--max-len",
        "32",
        "--storage",
        storage,
        "--study",
        name,
        "--worker",
    ]
    if heartbeat is not None:
        argv += ["--heartbeat", str(heartbeat)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(workers)
    ]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"worker failed ({p.returncode}):\n{err[-2000:]}")
    wall = time.perf_counter() - t0
    done = [
        t for t in optuna.load_study(study_name=name, storage=direct).get_trials(deepcopy=False) if t.number < trials
    ]
    start = min(t.datetime_start for t in done)
    end = max(t.datetime_complete for t in done)
    span = (end - start).total_seconds()
    per_trial = statistics.median((t.datetime_complete - t.datetime_start).total_seconds() for t in done)
    # pruned trials are shorter, and the two configurations prune differently (each worker samples
    # on its own): epochs trained per second is the like-for-like measure of work done
    epochs_run = sum(max(1, len(t.intermediate_values)) for t in done)
    return {
        "throughput": len(done) / span,
        "epochs_per_s": epochs_run / span,
        "span": span,
        "per_trial": per_trial,
        "wall": wall,
        "workers_seen": len({t.user_attrs.get("worker") for t in done}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--storage", default=None, help="an Optuna RDB URL (default: a temporary SQLite file)")
    ap.add_argument("--postgres", action="store_true", help="start a throwaway PostgreSQL server for the run")
    ap.add_argument(
        "--heartbeat", type=int, default=None, help="seconds between trial heartbeats (default: tbkit's 60; 0: off)"
    )
    args = ap.parse_args()

    if args.postgres:
        sys.path.insert(0, str(ROOT / "tests" / "support"))
        from pg_server import postgres_server

        server = postgres_server()
    else:
        server = nullcontext(args.storage)
    with tempfile.TemporaryDirectory() as tmp, server as url:
        storage = url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        kind = storage.split(":", 1)[0]
        print(
            f"storage: {kind}; {args.trials} trials of {args.epochs} epochs (tiny_gpt, synthetic data, "
            f"block 32), {os.cpu_count()} CPUs, one torch thread per worker, heartbeat "
            f"{'off' if args.heartbeat == 0 else f'every {args.heartbeat or 60} s'}"
        )
        results = {1: [], 2: []}
        for _ in range(args.repeats):
            for workers in (1, 2):  # interleaved, so drifting machine load hits both alike
                results[workers].append(run_study(storage, workers, args.trials, args.epochs, args.heartbeat))
        med = {
            w: {
                k: statistics.median(r[k] for r in rs)
                for k in ("throughput", "epochs_per_s", "per_trial", "span", "wall")
            }
            for w, rs in results.items()
        }
        for w in (1, 2):
            m = med[w]
            print(
                f"{w} worker{'s' if w > 1 else ' '}: {m['throughput']:.3f} trials/s, {m['epochs_per_s']:.3f} "
                f"epochs/s (medians over {args.repeats}), median trial "
                f"{m['per_trial']:.2f} s, first start -> last completion {m['span']:.1f} s, wall incl. start-up "
                f"{m['wall']:.1f} s; workers that ran trials: {results[w][-1]['workers_seen']}"
            )
        print(
            f"ratio 2 workers / 1 worker: {med[2]['throughput'] / med[1]['throughput']:.2f}x trials/s, "
            f"{med[2]['epochs_per_s'] / med[1]['epochs_per_s']:.2f}x epochs/s"
        )


if __name__ == "__main__":
    main()
