"""What ``torch.compile`` would cost and save in tbkit's training, measured on a plain loop.

    python benchmarks/bench_compile.py [--models example,7m] [--device cpu|cuda] [--steps 20] [--rounds 3]

tbkit trains eagerly (``TrainResult.execution`` says so), on the grounds that compiling costs more
than the runs a notebook does (tens to a few thousand steps) save. This benchmark puts numbers on
that: for each model, the same loop as benchmarks/bench_training.py (batch 16 x 64, AdamW 1e-3,
clip 1.0, the precision tbkit chooses on the device, data on the device), once eager and once with
the model under ``torch.compile`` (default mode, a fresh compile cache). It prints the first step
(which compiles), the steady milliseconds per step of each (median of ``--rounds`` timed chunks
of ``--steps`` steps, eager and compiled alternating), and the number of steps after which
compiling would have paid for itself ("never" when the compiled step is not faster).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def make_step(model, data, device, precision: str):
    """One training step of ``model`` on batches of ``data`` (the loop of bench_training.py)."""
    import torch
    from bench_training import BATCH, plain_step

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mask = torch.ones_like(data)
    position = [0]

    def step() -> torch.Tensor:
        start = position[0] % (len(data) - BATCH)
        position[0] += BATCH
        x, m = data[start : start + BATCH], mask[start : start + BATCH]
        return plain_step(model, opt, x, m, device, precision).detach()

    return step


def timed(step, n: int, device) -> float:
    """Seconds for ``n`` steps, read back once at the end."""
    from bench_training import sync

    sync(device)
    started = time.perf_counter()
    for _ in range(n):
        loss = step()
    float(loss)
    sync(device)
    return time.perf_counter() - started


def measure(name: str, device, args) -> tuple:
    import torch
    from bench_training import BATCH, LEN, build

    from tbkit.training.precision import choose_precision, device_capabilities

    precision = choose_precision(device_capabilities(device)).precision
    lm = build(name)
    data = torch.randint(0, lm.vocab_size, (64 * BATCH, LEN), generator=torch.Generator().manual_seed(0)).to(device)
    eager_model = copy.deepcopy(lm.module).to(device).train()
    compiled_model = torch.compile(copy.deepcopy(lm.module).to(device).train())
    eager = make_step(eager_model, data, device, precision)
    compiled = make_step(compiled_model, data, device, precision)
    first_eager, first_compiled = timed(eager, 1, device), timed(compiled, 1, device)
    timed(compiled, 2, device)  # a recompile for the second call's guards, if any, is not a steady step
    per_step: dict[str, list[float]] = {"eager": [], "compiled": []}
    for r in range(args.rounds):
        sides = [("eager", eager), ("compiled", compiled)]
        for side, step in sides if r % 2 == 0 else sides[::-1]:
            per_step[side].append(timed(step, args.steps, device) / args.steps)
    e, c = statistics.median(per_step["eager"]), statistics.median(per_step["compiled"])
    extra = first_compiled - first_eager
    break_even = f"{extra / (e - c):,.0f}" if c < e else "never"
    n_params = sum(p.numel() for p in lm.module.parameters())
    return name, n_params, precision, first_compiled, e, c, break_even


def main(argv=None) -> None:
    # a fresh compile cache, as a new notebook runtime has: a warm one (an earlier run of this
    # script) turns 10-25 s of compiling into 2 s and would flatter torch.compile
    cache = tempfile.mkdtemp(prefix="bench-compile-cache-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cache, "inductor")
    os.environ["TRITON_CACHE_DIR"] = os.path.join(cache, "triton")
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="example,7m")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=20, help="steps per timed chunk")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    sys.path.insert(0, str(HERE))
    device = torch.device(args.device)
    print(f"torch {torch.__version__}; {device}; {torch.get_num_threads()} CPU threads; medians of {args.rounds}")
    print(
        f"{'model':8} {'params':>10} {'precision':10} {'compile s':>9} {'eager ms':>9} {'compiled ms':>11} "
        f"{'ratio':>6} {'pays after':>10}"
    )
    for name in args.models.split(","):
        model, n_params, precision, first, e, c, break_even = measure(name.strip(), device, args)
        print(
            f"{model:8} {n_params:>10,} {precision:10} {first:9.1f} {e * 1e3:9.1f} {c * 1e3:11.1f} "
            f"{e / c:5.2f}x {break_even:>10} steps",
            flush=True,
        )


if __name__ == "__main__":
    main()
