"""The capacity check against float64 singular values of the same weights, before and after.

    python benchmarks/bench_capacity.py [--size 7m|gpt2-small|small] [--repeats 5] [--device cpu|cuda]

In one process, alternating rounds, three things are timed on the same model:
  reference  float64 singular values (torch.linalg.svdvals) of every 2-D weight, on the CPU;
  before     the capacity check computing each effective rank that way (the previous method:
             one float64 SVD per matrix on the CPU, weights and hidden states);
  after      the capacity check as shipped (batched float32 Gram eigenvalues on the model's
             device, float64 only for matrices whose spectrum reaches float32's rounding floor).
It prints medians, each as a multiple of the reference, the speed-up after/before, and the largest
relative difference between the effective ranks of the two methods (must stay under 1 %).
Figures are built in memory only (no out folder), as in bench_tier2.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="7m", choices=["small", "7m", "gpt2-small"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    args = parser.parse_args(argv)

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_tier1 import build

    from tbkit.checks import CheckContext
    from tbkit.checks.effective_rank import effective_rank
    from tbkit.checks.tier2 import capacity

    device = torch.device(args.device)
    lm = build(args.size)
    lm.module.to(device)
    weights = [p.detach() for p in lm.module.parameters() if p.dim() == 2 and min(p.shape) >= 2]
    n_params = sum(p.numel() for p in lm.module.parameters())

    def reference():
        for w in weights:
            torch.linalg.svdvals(w.to("cpu", torch.float64))

    def previous_method(matrices, _device=None):
        return [effective_rank(m) for m in matrices]

    shipped = capacity.effective_ranks

    def check(method):
        def run():
            capacity.effective_ranks = method
            try:
                ctx = CheckContext(model=lm, device=device, out_dir=None, seed=0)
                ctx.check_id, ctx.tier = "capacity", 2
                rows = list(capacity.check_capacity(ctx))
            finally:
                capacity.effective_ranks = shipped
            if device.type == "cuda":
                torch.cuda.synchronize()
            return rows

        return run

    before_rows, after_rows = check(previous_method)(), check(shipped)()  # warm-up, and the verdicts
    ranks_old = previous_method(weights)
    ranks_new = shipped(weights, device)
    worst = max(abs(a - b) / b for a, b in zip(ranks_new, ranks_old) if b > 0)

    times: dict = {"reference": [], "before": [], "after": []}
    for _ in range(args.repeats):
        times["reference"].append(timed(reference))
        times["before"].append(timed(check(previous_method)))
        times["after"].append(timed(check(shipped)))
    med = {k: statistics.median(v) for k, v in times.items()}

    print(
        f"model {args.size}: {n_params / 1e6:.1f} M parameters, {len(weights)} weight matrices, device "
        f"{device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {args.repeats} rounds"
    )
    print(f"{'':<10} {'median s':>9} {'min s':>8} {'x reference':>12}")
    for name, values in times.items():
        print(f"{name:<10} {med[name]:9.3f} {min(values):8.3f} {med[name] / med['reference']:12.2f}")
    print(f"speed-up of the capacity check, before / after: {med['before'] / med['after']:.1f}x")
    print(f"largest relative difference of the weights' effective ranks (after vs float64): {worst:.2e}")
    same = [(r.status, r.metric) for r in before_rows] == [(r.status, r.metric) for r in after_rows]
    print(f"verdicts: before {[str(r.status) for r in before_rows]}, after {[str(r.status) for r in after_rows]}")
    return 0 if same and worst < 0.01 else 1


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
