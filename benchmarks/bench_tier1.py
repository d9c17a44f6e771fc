"""Tier 1 wall time per check on the bundled example (tiny_gpt), on CPU.

    python3 benchmarks/bench_tier1.py [--repeats 3] [--example tiny_gpt]

Runs the whole of Tier 1 through ``tbkit.run`` ``--repeats`` times (as `tbkit run` does: report
files and plots written to a temporary folder, no progress bar) and prints, per check, the median
of its wall time (the sum of its rows' ``seconds``), the median total, and the ratio of each to a
reference measured in the same run: one eval forward of the example on 4 x max_len tokens
(no_grad). The ratio — "this check costs N plain forwards" — stays comparable across machines
where seconds do not. Target (issue 5): the whole of Tier 1 <= 20 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--example", default="tiny_gpt")
    args = parser.parse_args(argv)

    import torch

    import tbkit
    from tbkit.checks import inputs

    lm = tbkit.load(args.example)
    lm.module.eval()
    ids = inputs.token_ids(lm, 4, inputs.usable_max_len(lm), torch.Generator().manual_seed(0))

    def reference() -> float:
        t = time.perf_counter()
        with torch.no_grad():
            lm.forward(ids)
        return time.perf_counter() - t

    reference()  # warm-up
    refs = [reference() for _ in range(20)]
    per_check = defaultdict(list)
    totals, verdicts = [], []
    for _i in range(args.repeats):
        refs += [reference() for _ in range(5)]  # interleaved, so machine load affects both sides
        out = Path(tempfile.mkdtemp(prefix="bench-tier1-"))
        t = time.perf_counter()
        report = tbkit.run(lm, out_dir=out, progress=False, stream=io.StringIO())
        totals.append(time.perf_counter() - t)
        verdicts.append(report.verdict.value)
        sums = defaultdict(float)
        for row in report.rows:
            sums[row.check] += row.seconds
        for check, seconds in sums.items():
            per_check[check].append(seconds)
    ref = statistics.median(refs)

    print(
        f"example {args.example}: {type(lm.module).__name__}, vocab {lm.vocab_size}, max_len {lm.max_len}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; {args.repeats} runs"
    )
    print(f"reference: one no_grad forward of {ids.shape[0]}x{ids.shape[1]} tokens: median {ref * 1e3:.2f} ms")
    print(f"{'check':<18} {'median s':>9} {'min s':>8} {'max s':>8} {'x forward':>10}")
    for check, times in per_check.items():
        med = statistics.median(times)
        print(f"{check:<18} {med:>9.3f} {min(times):>8.3f} {max(times):>8.3f} {med / ref:>10.0f}")
    total = statistics.median(totals)
    print(f"{'TOTAL (tbkit.run)':<18} {total:>9.3f} {min(totals):>8.3f} {max(totals):>8.3f} {total / ref:>10.0f}")
    print(
        f"target: <= 20 s on 2 cores -> {'met' if total <= 20 else 'NOT met'}; verdicts: {', '.join(verdicts)} "
        "(speed rows WARN when the machine is busy)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
