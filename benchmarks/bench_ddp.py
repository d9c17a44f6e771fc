"""DDP step time: `tbkit.train` on one process against two (CPU, gloo, forked by Lightning), same run.

Both configurations train the bundled example on the same data with the same GLOBAL batch
(`batch_size` is global in tbkit: two processes take half each), so one optimizer step does the
same work; the second process should halve the time of the forward/backward and add one gradient
all-reduce. Each process gets one torch thread (OMP_NUM_THREADS=1, set before torch loads), so the
comparison is about processes, not threads.

Step time is measured inside the run by a callback on process 0 (time between consecutive
`on_train_batch_end` calls, the first --warmup steps left out), so process start-up and the fork
are not counted. Prints medians over --repeats (configurations interleaved) and the ratio
one / two processes (2.0 = perfect scaling; on a machine with fewer free cores than processes
expect less). Also the start-up cost (wall time of `train` minus the timed steps).

    python benchmarks/bench_ddp.py [--steps 40] [--batch 16] [--max-len 64] [--repeats 3]

No GPU was lent to this task: the numbers are CPU numbers. On a GPU machine pass --gpu to time
devices=1 against devices=2 GPUs (NCCL); run it in a fresh process (CUDA must not be initialised
before the workers fork).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported, so the workers inherit it
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))


def step_timer(path: Path):
    import lightning.pytorch as pl

    class StepTimes(pl.Callback):
        """Process 0 writes the times between consecutive optimizer steps to ``path``."""

        def __init__(self):
            self.stamps = []

        def on_train_batch_end(self, trainer, *args):
            self.stamps.append(time.perf_counter())

        def on_fit_end(self, trainer, pl_module):
            if trainer.is_global_zero:
                gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:])]
                path.write_text(json.dumps(gaps))

    return StepTimes()


def one_run(model, ids, devices: int, args, gpu: bool) -> dict:
    import tbkit

    with tempfile.TemporaryDirectory() as tmp:
        times = Path(tmp) / "steps.json"
        t0 = time.perf_counter()
        res = tbkit.train(
            model,
            ids,
            epochs=1000,
            max_steps=args.steps,
            batch_size=args.batch,
            max_len=args.max_len,
            devices=devices,
            device="cuda" if gpu else "cpu",
            checkpoint_dir=Path(tmp) / "ck",
            resume=False,
            callbacks=[step_timer(times)],
        )
        wall = time.perf_counter() - t0
        gaps = json.loads(times.read_text())[args.warmup :]
    return {
        "step": statistics.median(gaps),
        "startup": wall - sum(gaps),
        "final": res.final_val_loss,
        "distribution": res.distribution,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5, help="first steps left out of the medians")
    ap.add_argument("--batch", type=int, default=16, help="global batch (blocks per optimizer step)")
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gpu", action="store_true", help="time 1 against 2 GPUs instead of CPU processes")
    args = ap.parse_args()

    import torch

    import tbkit

    model = tbkit.load()  # the bundled example: tiny GPT, d_model 64, 2 layers, vocabulary 512
    ids = torch.randint(0, 512, (256, args.max_len), generator=torch.Generator().manual_seed(0))
    print(
        f"tbkit.train, bundled example, global batch {args.batch} x {args.max_len} tokens, {args.steps} steps "
        f"(first {args.warmup} not timed), {'GPU' if args.gpu else 'CPU'}, {os.cpu_count()} CPUs, "
        f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    )
    results = {1: [], 2: []}
    for _ in range(args.repeats):
        for devices in (1, 2):  # interleaved, so drifting machine load hits both alike
            results[devices].append(one_run(model, ids, devices, args, args.gpu))
    med = {d: {k: statistics.median(r[k] for r in rs) for k in ("step", "startup")} for d, rs in results.items()}
    for d in (1, 2):
        m = med[d]
        print(
            f"{d} process{'es' if d > 1 else '  '}: median step {1000 * m['step']:.1f} ms "
            f"({args.batch / m['step']:.0f} blocks/s), start-up {m['startup']:.1f} s "
            f"(medians over {args.repeats}); {results[d][-1]['distribution']}"
        )
    print(
        f"ratio step time 1 process / 2 processes: {med[1]['step'] / med[2]['step']:.2f}x "
        f"(2.0 = perfect scaling); final val loss 1: {results[1][-1]['final']:.5f}, 2: {results[2][-1]['final']:.5f}"
    )


if __name__ == "__main__":
    main()
