"""Tier 3 training speed against a plain PyTorch loop, side by side in one process (issue 25).

    python benchmarks/bench_training.py [--models example,7m] [--short 10] [--long 40] [--rounds 3]
                                        [--device cpu|cuda] [--no-hpo]

For each model (``example``: the bundled tiny_gpt that ``tbkit run`` uses; ``7m``: the exporter-style
decoder of gpu_tier1.py, d 256, 4 layers, vocab 8000, about 7 M parameters) it times

- ``overfit``: the check through ``tbkit.run(checks=["overfit"])`` (one fixed 2 x 64 batch, Adam
  1e-3, clip 1.0, eval mode), forced to run all its steps (``overfit.loss_drop`` = 1);
- ``train``: ``tbkit.train`` (Lightning; batch 16 x 64, AdamW 1e-3 with weight decay 0.01 on
  matrices, warmup + cosine LambdaLR stepped per step, clip 1.0), one epoch cut by ``max_steps``;
- ``hpo``: one ``tbkit.search`` trial of one epoch (its data sized to the step count);

each against a plain loop written here (zero_grad / forward / backward / clip / step, data on the
device, the same model, data, batch, optimizer, schedule and precision). The cost of one step is
the difference of a ``--long`` and a ``--short`` run over the difference of their steps, so setup
(loading, copies, evaluation, checkpoints, Lightning's start) cancels. Rounds alternate the sides;
the table prints medians of steps/s and tokens/s and the ratio tbkit / loop (1.0 = the loop's
speed), from wall time and from this process's CPU time (steadier on a shared CPU; on CUDA read
the wall ratio). The loops read their loss back once, at the end, as a loop that only needs the result would.
"""

from __future__ import annotations

import argparse
import copy
import io
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BATCH, LEN = 16, 64  # train / hpo batch
OVERFIT_BATCH = 2  # the overfit check's fixed batch is 2 x 64
OVERFIT_FACTOR = 8  # overfit runs 8x --short/--long steps: its steps are about 8x cheaper than train's
SEVEN_M = dict(vocab=8000, d=256, heads=4, layers=4, max_len=128)


def build(name: str):
    import torch

    import tbkit

    if name == "example":
        return tbkit.load("tiny_gpt")
    sys.path.insert(0, str(HERE))
    from gpu_tier1 import ExportedGPT

    torch.manual_seed(0)
    return tbkit.load(ExportedGPT(**SEVEN_M), kind="decoder")


class Clock:
    """Wall and process CPU seconds since start. On a shared CPU the CPU seconds are the steadier
    measure (other people's processes stretch the wall time of whichever side runs then); on CUDA
    only the wall time counts."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lm_loss(logits, ids, mask):
    import torch.nn.functional as F

    labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    v = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, v).float(), labels.reshape(-1), ignore_index=-100)


def autocast(device, precision: str):
    import contextlib

    import torch

    if precision.endswith("-mixed"):
        dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


# ---- the plain loops ---------------------------------------------------------------------------
def plain_step(model, opt, x, m, device, precision: str):
    """One hand-written training step: forward, loss, zero_grad, backward, clip 1.0, step (the
    loss stays on the device)."""
    import torch

    with autocast(device, precision):
        loss = lm_loss(model(x, attention_mask=m), x, m)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss


def loop_train(lm, ids, device, steps: int, precision: str, lr=1e-3, weight_decay=0.01) -> tuple:
    """What tbkit.train does per step, by hand: AdamW (no decay on 1-D), warmup-cosine, clip 1.0."""
    import torch

    model = copy.deepcopy(lm.module).to(device).train()
    data = ids.to(device)
    mask = torch.ones_like(data)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": other}], lr=lr)

    def factor(step: int) -> float:
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / max(1, steps))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).to(device)
    sync(device)
    clock = Clock()
    for step in range(steps):
        idx = order[step * BATCH : (step + 1) * BATCH]
        loss = plain_step(model, opt, data[idx], mask[idx], device, precision)
        sched.step()
    float(loss.detach())  # the one read-back
    return clock.read()


def loop_overfit(lm, device, steps: int) -> tuple:
    """The overfit check's work by hand: Adam 1e-3 on one fixed 2 x 64 batch, eval mode, clip 1.0."""
    import torch
    import torch.nn.functional as F

    model = copy.deepcopy(lm.module).to(device).eval()
    ids = torch.randint(0, lm.vocab_size, (OVERFIT_BATCH, LEN), generator=torch.Generator().manual_seed(1)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sync(device)
    clock = Clock()
    for _ in range(steps):
        out = model(ids).float()
        loss = F.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    float(loss.detach())
    return clock.read()


# ---- tbkit -------------------------------------------------------------------------------------
def step_clock(device):
    """A Lightning callback timing steps 2..n inside fit (setup excluded by construction)."""
    import lightning.pytorch as pl

    class StepClock(pl.Callback):
        def __init__(self) -> None:
            self.first = self.last = None
            self.steps = 0

        def on_train_batch_start(self, trainer, *args) -> None:
            if self.first is None and trainer.global_step == 1:
                sync(device)
                self.first = Clock()

        def on_train_batch_end(self, trainer, *args) -> None:
            if self.first is not None:
                self.steps += 1
                if self.steps == trainer.max_steps - 1:
                    sync(device)
                    self.last = self.first.read()

        def per_step(self) -> tuple:
            return tuple(t / max(1, self.steps) for t in self.last)

    return StepClock()


def tbkit_train(lm, ids, device, steps: int, clock=None) -> tuple:
    """(seconds, precision) of tbkit.train cut at ``steps``; the data outlast the long run's epoch."""
    import torch

    import tbkit

    with tempfile.TemporaryDirectory() as ck:
        total = Clock()
        res = tbkit.train(
            lm,
            (ids, torch.ones_like(ids)),
            epochs=1,
            max_steps=steps,
            batch_size=BATCH,
            max_len=LEN,
            lr=1e-3,
            weight_decay=0.01,
            val_fraction=1e-4,  # one validation block: evaluation is setup, not the step
            checkpoint_dir=ck,
            resume=False,
            device=str(device),
            callbacks=[clock] if clock is not None else [],
        )
        seconds = total.read()
    assert res.global_step == steps, (res.global_step, steps)
    return seconds, res.precision


def tbkit_overfit(lm, device, steps: int) -> tuple:
    import tbkit

    with tempfile.TemporaryDirectory() as out:
        clock = Clock()
        report = tbkit.run(
            lm,
            checks=["overfit"],
            device=str(device),
            out_dir=out,
            progress=False,
            stream=io.StringIO(),
            options={"overfit.steps": steps, "overfit.loss_drop": 1.0},  # never stop early
        )
        seconds = clock.read()
    rows = [r for r in report.rows if r.metric == "loss_drop"]
    assert rows and f"in {steps} steps" in rows[0].detail, [r.detail for r in report.rows]
    return seconds


def tbkit_hpo_trial(lm, device, steps: int) -> tuple:
    """One search trial of one epoch over ``steps * BATCH`` training blocks (+1 validation block)."""
    import torch

    import tbkit

    ids = torch.randint(0, lm.vocab_size, (steps * BATCH + 1, LEN), generator=torch.Generator().manual_seed(2))
    clock = Clock()
    res = tbkit.search(
        lm, ids, n_trials=1, epochs=1, batch_size=BATCH, max_len=LEN, val_fraction=1e-4, device=str(device)
    )
    seconds = clock.read()
    assert res.n_complete + res.n_pruned == 1, res.summary()
    return seconds


# ---- measuring ---------------------------------------------------------------------------------
def per_step(fn, short: int, long: int) -> tuple:
    """(wall, CPU) seconds per step: (t(long) - t(short)) / (long - short), so setup cancels."""
    t_short = fn(short)
    t_long = fn(long)
    return tuple(max(1e-9, (b - a) / (long - short)) for a, b in zip(t_short, t_long))


def measure(name: str, device, args) -> list:
    import torch

    lm = build(name)
    n_params = sum(p.numel() for p in lm.module.parameters())
    ids = torch.randint(0, lm.vocab_size, (args.long * BATCH + 1, LEN), generator=torch.Generator().manual_seed(0))
    precision = tbkit_train(lm, ids, device, 2)[1]  # warm-up, and the precision tbkit chose
    pairs = {
        "overfit": (  # OVERFIT_FACTOR times the steps (a 2 x 64 step is cheap), seconds per step kept
            lambda n: tuple(t / OVERFIT_FACTOR for t in tbkit_overfit(lm, device, n * OVERFIT_FACTOR)),
            lambda n: tuple(t / OVERFIT_FACTOR for t in loop_overfit(lm, device, n * OVERFIT_FACTOR)),
            OVERFIT_BATCH * LEN,
        ),
        "train": (
            lambda n: tbkit_train(lm, ids, device, n)[0],
            lambda n: loop_train(lm, ids, device, n, precision),
            BATCH * LEN,
        ),
    }
    if args.in_fit:  # steady steps inside fit, timed by a callback, against the loop's long run per step

        def in_fit(n: int) -> tuple:
            clock = step_clock(device)
            tbkit_train(lm, ids, device, n, clock)
            return tuple(t * n for t in clock.per_step())

        pairs["train, in-fit"] = (in_fit, lambda n: loop_train(lm, ids, device, n, precision), BATCH * LEN)
    if args.hpo:
        pairs["hpo trial"] = (
            lambda n: tbkit_hpo_trial(lm, device, n),
            lambda n: loop_train(lm, ids, device, n, precision),
            BATCH * LEN,
        )
    if args.only:
        pairs = {k: v for k, v in pairs.items() if k in args.only.split(";")}
    times: dict = {(k, side): [] for k in pairs for side in ("tbkit", "loop")}
    for r in range(args.rounds):
        for key, (ours, loop, _) in pairs.items():
            sides = [("tbkit", ours), ("loop", loop)]
            for side, fn in sides if r % 2 == 0 else sides[::-1]:  # alternate who goes first
                times[(key, side)].append(per_step(fn, args.short, args.long))
        print(f"  {name}: round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    rows = []
    for key, (_, _, tokens) in pairs.items():
        ours = [statistics.median(t[i] for t in times[(key, "tbkit")]) for i in (0, 1)]
        loop = [statistics.median(t[i] for t in times[(key, "loop")]) for i in (0, 1)]
        rows.append((name, n_params, key, precision, tokens, ours, loop))
    return rows


def main(argv=None) -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="example,7m")
    p.add_argument("--short", type=int, default=10)
    p.add_argument("--long", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-hpo", dest="hpo", action="store_false")
    p.add_argument("--in-fit", action="store_true", help="also time train's steps inside fit (a callback)")
    p.add_argument("--only", default=None, help="semicolon-separated subset of: overfit;train;hpo trial;train, in-fit")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    import tbkit

    print(f"tbkit {tbkit.__version__} from {Path(tbkit.__file__).parent}; torch {torch.__version__}; {device}, ")
    print(
        f"{torch.get_num_threads()} threads; per step = (t({args.long}) - t({args.short})) / {args.long - args.short}"
    )
    print(f"medians of {args.rounds} alternating rounds\n")
    head = f"{'model':8} {'params':>9} {'what':10} {'precision':10} {'tbkit steps/s':>13} {'loop steps/s':>12}"
    print(head + f" {'tbkit tok/s':>11} {'loop tok/s':>10} {'ratio wall':>10} {'ratio CPU':>9}", flush=True)
    for name in args.models.split(","):  # each model's rows as soon as it is measured
        for model, n_params, key, precision, tokens, ours, loop in measure(name.strip(), device, args):
            print(
                f"{model:8} {n_params:>9,} {key:10} {precision:10} {1 / ours[0]:>13.2f} {1 / loop[0]:>12.2f} "
                f"{tokens / ours[0]:>11.0f} {tokens / loop[0]:>10.0f} {loop[0] / ours[0]:>9.2f}x "
                f"{loop[1] / ours[1]:>8.2f}x",
                flush=True,
            )
    print("ratio = tbkit steps/s over the loop's (1.00x = the loop's speed); steps/s and tok/s from wall time")


if __name__ == "__main__":
    main()
