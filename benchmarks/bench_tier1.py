"""Tier 1 check time as a multiple of one training step of the same model, on CPU.

    python3 benchmarks/bench_tier1.py [--size 7m|gpt2-small|small|example] [--repeats 3]

The reference is one forward + backward of the model at (B=4, T=64) (next-token cross-entropy,
grad mode, median of many), measured in the same process and interleaved with the Tier 1 runs,
so machine load affects both sides. The ratio "Tier 1 costs N training steps" stays comparable
across machines where seconds do not. On a shared machine the medians of both sides swing with
what else runs, so the ratio is also given from the minimums (the cost without interference). Issue 13 item 5: <= 5 on the 7 M-parameter decoder
(d 256, 4 layers, vocab 8000), without dropping a check.

Models: ``7m`` and ``gpt2-small`` (d 768, 12 layers, vocab 50257, 1024 positions; slow on 2
cores, use --repeats 1) are the exporter-style decoder of benchmarks/gpu_tier1.py with random
weights; ``example`` is the bundled tiny_gpt. Per check: median seconds (sum of its rows'
``seconds``) and its share of the ratio; TOTAL is the sum of the check times (the runner's own
overhead of writing the report is printed apart).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

SIZES = {
    "small": dict(vocab=1000, d=64, heads=4, layers=2, max_len=64),
    "7m": dict(vocab=8000, d=256, heads=4, layers=4, max_len=128),
    "gpt2-small": dict(vocab=50257, d=768, heads=12, layers=12, max_len=1024),
}


def build(size: str):
    import torch

    import tbkit

    if size == "example":
        return tbkit.load("tiny_gpt")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_tier1 import ExportedGPT

    torch.manual_seed(0)
    return tbkit.load(ExportedGPT(**SIZES[size]), kind="decoder")


def train_step_timer(lm):
    """One forward + backward at (B=4, T=64) in train mode, as one optimisation step costs."""
    import torch
    import torch.nn.functional as F

    T = min(64, lm.max_len or 64)
    ids = torch.randint(0, lm.vocab_size, (4, T), generator=torch.Generator().manual_seed(0))

    def once() -> tuple:
        t, c = time.perf_counter(), time.process_time()
        out = lm.forward(ids)
        loss = F.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]).float(), ids[:, 1:].reshape(-1))
        loss.backward()
        lm.module.zero_grad(set_to_none=True)
        return time.perf_counter() - t, time.process_time() - c

    return once, T


def cpu_time_per_check() -> dict:
    """Wrap every registered check so the CPU time of this process spent inside it is added up
    (``time.process_time``: all threads). CPU time is what the checks cost this process; unlike
    wall time it barely moves when other processes compete for the cores."""
    import dataclasses

    from tbkit.checks import REGISTRY, checks_for

    checks_for([1])
    spent: dict = defaultdict(float)

    def timed(spec):
        def run(ctx):
            it = iter(spec.func(ctx))
            while True:
                t = time.process_time()
                try:
                    row = next(it)
                except StopIteration:
                    spent[spec.id] += time.process_time() - t
                    return
                spent[spec.id] += time.process_time() - t
                yield row

        return run

    for key, spec in list(REGISTRY.items()):
        REGISTRY[key] = dataclasses.replace(spec, func=timed(spec))
    return spent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="7m", choices=[*SIZES, "example"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default torch's); 1 is steadier on a shared machine"
    )
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    import tbkit

    lm = build(args.size)
    cpu = cpu_time_per_check()
    n_params = sum(p.numel() for p in lm.module.parameters())
    once, T = train_step_timer(lm)
    once()  # warm-up
    pairs = [once() for _ in range(10)]
    per_check, totals, walls, verdicts, cpu_totals = defaultdict(list), [], [], [], []
    cpu_per_check, not_pass = defaultdict(list), []
    for _ in range(args.repeats):
        pairs += [once() for _ in range(5)]  # interleaved with the runs
        cpu.clear()
        out = Path(tempfile.mkdtemp(prefix="bench-tier1-"))
        t = time.perf_counter()
        report = tbkit.run(lm, device="cpu", out_dir=out, progress=False, stream=io.StringIO())
        walls.append(time.perf_counter() - t)
        verdicts.append(report.verdict.value)
        not_pass += [
            f"  {r.status.value} {r.check}: {r.metric}: {r.detail[:160]}"
            for r in report.rows
            if r.status.value != "PASS"
        ]
        sums = defaultdict(float)
        # the conventions, measured once before the checks: in no check's rows
        sums["(conventions measured)"] = report.run.get("conventions_seconds", 0.0)
        for row in report.rows:
            sums[row.check] += row.seconds
        for check, seconds in sums.items():
            per_check[check].append(seconds)
        totals.append(sum(sums.values()))
        cpu_totals.append(sum(cpu.values()))
        for check, seconds in cpu.items():
            cpu_per_check[check].append(seconds)
    refs, cpu_refs = [w for w, _ in pairs], [c for _, c in pairs]
    ref, cpu_ref = statistics.median(refs), statistics.median(cpu_refs)

    print(
        f"model {args.size}: {type(lm.module).__name__}, {n_params / 1e6:.1f} M parameters, vocab {lm.vocab_size}, "
        f"max_len {lm.max_len}; torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; "
        f"{args.repeats} runs"
    )
    print(f"reference: one forward + backward at (B=4, T={T}): median {ref * 1e3:.1f} ms of {len(refs)}")
    print(f"{'check':<18} {'median s':>9} {'min s':>8} {'max s':>8} {'x fwd+bwd':>10} {'CPU x':>6}")
    for check, times in per_check.items():
        med = statistics.median(times)
        cpu_x = statistics.median(cpu_per_check[check]) / cpu_ref if cpu_per_check[check] else float("nan")
        print(f"{check:<18} {med:>9.3f} {min(times):>8.3f} {max(times):>8.3f} {med / ref:>10.1f} {cpu_x:>6.1f}")
    total = statistics.median(totals)
    print(f"{'TOTAL (checks)':<18} {total:>9.3f} {min(totals):>8.3f} {max(totals):>8.3f} {total / ref:>10.1f}")
    print(f"tbkit.run wall time (with report writing and plots): median {statistics.median(walls):.3f} s")
    print(
        f"ratio Tier 1 / fwd+bwd, wall time: medians {total / ref:.1f}, minimums {min(totals) / min(refs):.1f} "
        f"(fwd+bwd min {min(refs) * 1e3:.1f} ms)"
    )
    cpu_total = statistics.median(cpu_totals)
    print(
        f"ratio Tier 1 / fwd+bwd, CPU time of this process: {cpu_total / cpu_ref:.1f} (checks {cpu_total:.3f} s, "
        f"fwd+bwd {cpu_ref * 1e3:.1f} ms, medians); target (7m) <= 5; verdicts: {', '.join(verdicts)}"
    )
    print("\n".join(not_pass))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
