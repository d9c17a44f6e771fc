"""How close each Tier 1 and Tier 2 check is to the hardware: its time as a multiple of one forward
and of one forward + backward of the same model at the same shape, on CPU or CUDA.

    python benchmarks/bench_checks_vs_forward.py [--size 7m|gpt2-small|small|example] [--tiers 1,2]
                                                 [--device cpu|cuda] [--repeats 3]

References, measured in the same process and interleaved with the runs (a shared machine moves both
sides together): one eval forward under no_grad at (B=4, T=64), and one train-mode forward +
next-token cross-entropy + backward at the same shape. Per check: median seconds (sum of its rows'
``seconds``, as the report records them), and that median as a multiple of each reference. The
conventions are measured once before the checks, in no check's rows; that time is its own line
(``run.conventions_seconds`` in report.json) and counted in the tier total. The last line is the
whole ``tbkit.run`` call (report files and plots included), the number a user waits for.
Tier 3 trains, so it is measured against a plain training loop instead (benchmarks/bench_training.py).
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

MEASURED = "(conventions measured)"  # the runner's one-off measurement before the checks


def forward_timer(lm, device, T: int):
    import torch

    ids = torch.randint(0, lm.vocab_size, (4, T), generator=torch.Generator().manual_seed(0)).to(device)

    def once() -> float:
        lm.module.eval()
        t = time.perf_counter()
        with torch.no_grad():
            lm.forward(ids)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    return once


def forward_backward_timer(lm, device, T: int):
    import torch
    import torch.nn.functional as F

    ids = torch.randint(0, lm.vocab_size, (4, T), generator=torch.Generator().manual_seed(0)).to(device)

    def once() -> float:
        lm.module.train()
        t = time.perf_counter()
        out = lm.forward(ids)
        loss = F.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]).float(), ids[:, 1:].reshape(-1))
        loss.backward()
        lm.module.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    return once


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="7m", choices=["small", "7m", "gpt2-small", "example"])
    parser.add_argument("--tiers", default="1,2", help="comma-separated, from 1 and 2")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    tiers = [int(t) for t in args.tiers.split(",")]

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_tier1 import build

    import tbkit

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    lm = build(args.size)
    lm.module.to(device)
    T = min(64, lm.max_len or 64)
    fwd, fwd_bwd = forward_timer(lm, device, T), forward_backward_timer(lm, device, T)
    fwd(), fwd_bwd()  # warm-up
    fwd_times = [fwd() for _ in range(10)]
    bwd_times = [fwd_bwd() for _ in range(10)]
    per_check, walls, verdicts = defaultdict(list), [], []
    for _ in range(args.repeats):
        fwd_times += [fwd() for _ in range(5)]
        bwd_times += [fwd_bwd() for _ in range(5)]
        out = Path(tempfile.mkdtemp(prefix="bench-checks-"))
        started = time.perf_counter()
        report = tbkit.run(lm, tiers=tiers, device=str(device), out_dir=out, progress=False, stream=io.StringIO())
        walls.append(time.perf_counter() - started)
        shutil.rmtree(out, ignore_errors=True)
        verdicts.append(report.verdict.value)
        sums: dict = defaultdict(float)
        # measured once before the checks, in no check's rows: counted with the lowest tier run
        sums[(min(tiers), MEASURED)] = report.run.get("conventions_seconds", 0.0)
        for row in report.rows:
            sums[(row.tier, row.check)] += row.seconds
        for key, seconds in sums.items():
            per_check[key].append(seconds)
    f, fb = statistics.median(fwd_times), statistics.median(bwd_times)

    n_params = sum(p.numel() for p in lm.module.parameters())
    print(
        f"model {args.size}: {n_params / 1e6:.1f} M parameters, vocab {lm.vocab_size}, max_len {lm.max_len}; "
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; {args.repeats} runs"
    )
    print(f"references at (B=4, T={T}): forward {f * 1e3:.2f} ms, forward+backward {fb * 1e3:.2f} ms (medians)")
    print(f"{'tier':<4} {'check':<20} {'median s':>9} {'x forward':>10} {'x fwd+bwd':>10}")
    for tier in tiers:
        tier_total = 0.0
        for (t, check), times in per_check.items():
            if t != tier:
                continue
            med = statistics.median(times)
            tier_total += med
            print(f"{t:<4} {check:<20} {med:9.3f} {med / f:10.1f} {med / fb:10.1f}")
        print(f"{tier:<4} {'TIER ' + str(tier):<20} {tier_total:9.3f} {tier_total / f:10.1f} {tier_total / fb:10.1f}")
    wall = statistics.median(walls)
    print(
        f"{'all':<4} {'tbkit.run wall':<20} {wall:9.3f} {wall / f:10.1f} {wall / fb:10.1f}  (report, plots, setup included)"
    )
    print(f"verdicts: {', '.join(verdicts)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
