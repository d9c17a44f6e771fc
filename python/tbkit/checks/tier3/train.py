"""The ``train`` check (Tier 3)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from tbkit.checks.base import CheckContext, Row, Status, register
from tbkit.checks.restore import preserved
from tbkit.checks.spec import Option
from tbkit.checks.tier3.common import data_option, synthetic_label, why_not_trainable
from tbkit.training.api import TrainResult, loss_curve_figure, train


@register(
    "train",
    tier=3,
    summary="fine-tune with lightning on the user's data: val loss / perplexity per epoch",
    needs=("lightning",),
    applies=why_not_trainable,
    options=(
        Option("epochs", int, 2, "", "training epochs", positive=True),
        Option("max_steps", int, None, "", "stop after this many optimiser steps", positive=True),
        Option("devices", int, None, "", "devices (processes) per machine", positive=True),
        Option("strategy", str, None, "", "Lightning strategy (default ddp_fork, ddp under torchrun)"),
        Option("num_nodes", int, None, "", "number of machines", positive=True),
    ),
)
def check_train(ctx: CheckContext) -> Iterator[Row]:
    """Fine-tune with ``lightning.pytorch`` on the user's data (a text file or token ids; synthetic
    only when asked, and labelled so), AMP on GPU, checkpoints; validation loss and perplexity per
    epoch. Trains the model itself inside ``restore.preserved``, so it comes back as it was (the
    checkpoints keep the trained weights).

    Why: the real test of a design is whether it learns on real data. Thresholds: best validation
    loss not finite FAIL, not below its value before training WARN. Fix: learning rate, data, or the
    problems the other checks name."""
    data, synthetic = data_option(ctx)
    ckdir = None if ctx.out_dir is None else Path(ctx.out_dir) / "checkpoints" / "train"
    with preserved(ctx.model.module):
        result = _train(ctx, data, synthetic, ckdir)
    yield from _train_rows(ctx, result)
    ctx.save_figure(loss_curve_figure(result), "loss_curve")


def _train(ctx: CheckContext, data: Any, synthetic: bool, ckdir: Optional[Path]) -> TrainResult:
    return train(
        ctx.model,
        data,
        in_place=True,
        synthetic=synthetic,
        epochs=int(ctx.option("epochs")),
        batch_size=int(ctx.run_option("batch_size")),
        lr=float(ctx.run_option("lr")),
        max_len=ctx.run_option("max_len"),
        max_steps=ctx.option("max_steps"),
        checkpoint_dir=ckdir,
        resume=False,
        device=ctx.device,
        seed=ctx.seed,
        # several devices / machines (tbkit run --devices/--strategy/--num-nodes); None = one device
        devices=ctx.option("devices"),
        strategy=ctx.option("strategy"),
        num_nodes=ctx.option("num_nodes"),
    )


def _train_rows(ctx: CheckContext, result: TrainResult) -> Iterator[Row]:
    label = synthetic_label(result.synthetic)
    for note in result.notes:
        yield ctx.row(Status.PASS, "data", None, "", label + note)
    for rec in result.metrics.to_dict("records"):
        val = rec.get("val_loss")
        if val is None or val != val:
            continue
        yield ctx.row(
            Status.PASS,
            f"val_loss_epoch_{int(rec['epoch'])}",
            round(val, 4),
            "",
            f"{label}perplexity {rec['val_ppl']:.2f}, train loss {rec['train_loss']:.4f}, step {int(rec['step'])}",
        )
    start, best = result.initial_val_loss, result.best_val_loss
    if not math.isfinite(best):
        status, why = Status.FAIL, "validation loss is not finite"
    elif best >= start:
        status, why = Status.WARN, "validation loss never went below its value before training"
    else:
        status, why = Status.PASS, "validation loss fell"
    yield ctx.row(
        status,
        "best_val_loss",
        round(best, 4),
        f"< {start:.4f} (before training)",
        f"{label}{why}: {start:.4f} -> best {best:.4f}, final {result.final_val_loss:.4f} after "
        f"{result.global_step} steps on {result.distribution} ({result.precision}); checkpoints in {result.checkpoints[0].parent if result.checkpoints else 'none'}",
    )
