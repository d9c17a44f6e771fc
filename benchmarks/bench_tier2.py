"""Tier 2 wall time per check on the bundled example (tiny_gpt), on CPU.

    python3 benchmarks/bench_tier2.py [--repeats 5] [--example tiny_gpt] [--plots]

Prints, for each Tier 2 check, the median and min/max of ``--repeats`` runs, and the ratio to a
reference measured in the same run: one eval forward of the example on the largest input the
checks use (4×64 tokens, no_grad), timed right before each repetition of a check. The ratio says how many plain forwards a check costs, which
stays comparable across machines where seconds do not. Figures are rendered in memory only
unless ``--plots`` (then PNGs go to a temporary folder, as in a real run).
Needs captum for ``attribution`` (otherwise that line says it was not measured).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def median_time(fn, repeats: int) -> list:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--example", default="tiny_gpt")
    parser.add_argument("--plots", action="store_true", help="write the PNGs, as a real run does")
    args = parser.parse_args(argv)

    import torch

    import tbkit
    from tbkit.checks import CheckContext, checks_for, inputs

    lm = tbkit.load(args.example)
    out_dir = Path(tempfile.mkdtemp(prefix="bench-tier2-")) if args.plots else None
    specs = checks_for((2,))
    ids = inputs.token_ids(lm, 4, inputs.clamp_len(lm, 64), torch.Generator().manual_seed(0))
    lm.module.eval()

    def reference():
        with torch.no_grad():
            lm.forward(ids)

    reference()  # warm-up
    ref = median_time(reference, max(args.repeats, 20))
    ref_med = statistics.median(ref)
    print(
        f"example {args.example}: {lm.summary().splitlines()[0]}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU"
    )
    print(f"reference: one no_grad forward of 4x{ids.shape[1]} tokens: median {ref_med * 1e3:.2f} ms")
    print(f"{'check':<12} {'median s':>9} {'min s':>8} {'max s':>8} {'x forward':>10}  rows")
    total = total_ratio = 0.0
    for spec in specs:
        ctx = CheckContext(model=lm, device=torch.device("cpu"), out_dir=out_dir, seed=0)
        ctx.check_id, ctx.tier = spec.id, spec.tier
        if spec.needs:
            try:
                import captum.attr  # noqa: F401
            except ImportError:
                print(f"{spec.id:<12} not measured: captum is not importable here")
                continue
        rows = list(spec.func(ctx))  # warm-up (imports, first-call costs)
        # Interleaved: each repetition times the reference right before the check, so a machine
        # shared with other jobs moves both numbers together and the ratio stays meaningful.
        times, ratios = [], []
        for _ in range(args.repeats):
            r = statistics.median(median_time(reference, 5))
            (t,) = median_time(lambda: list(spec.func(ctx)), 1)
            times.append(t)
            ratios.append(t / r)
        med = statistics.median(times)
        ratio = statistics.median(ratios)
        total += med
        total_ratio += ratio
        summary = ", ".join(f"{r.status}" for r in rows)
        print(f"{spec.id:<12} {med:9.3f} {min(times):8.3f} {max(times):8.3f} {ratio:10.0f}  {summary}")
    print(f"{'Tier 2':<12} {total:9.3f} {'':>8} {'':>8} {total_ratio:10.0f}  (sum of medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
