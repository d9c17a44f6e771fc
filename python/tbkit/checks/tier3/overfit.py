"""The ``overfit`` check (Tier 3)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from tbkit.checks import inputs
from tbkit.checks.base import CheckContext, Row, Status, register
from tbkit.checks.numeric import kind_guess_note
from tbkit.checks.restore import preserved
from tbkit.checks.spec import Threshold
from tbkit.devices import seed_forked
from tbkit.training.memorise import memorise

if TYPE_CHECKING:  # torch is imported lazily; this is an annotation only
    import torch

# overfit: one fixed batch 2 x 64, Adam 1e-3, at most 300 steps, clip 1.0
OVERFIT_BATCH, OVERFIT_LEN, OVERFIT_STEPS, OVERFIT_LR = 2, 64, 300, 1e-3


OVERFIT_DROP = 0.90  # PASS when the loss falls by more than this fraction of its start


@register(
    "overfit",
    tier=3,
    summary="memorise one fixed batch (2x64, Adam 1e-3, <=300 steps): loss must fall >90%",
    thresholds=(
        Threshold("loss_drop", float, OVERFIT_DROP, "share", "PASS when the loss falls by more than this share"),
        Threshold("steps", int, OVERFIT_STEPS, "", "most optimiser steps", positive=True),
        Threshold("lr", float, OVERFIT_LR, "", "Adam learning rate", positive=True),
    ),
)
def check_overfit(ctx: CheckContext) -> Iterator[Row]:
    """Memorise one fixed batch of 2 x 64 seeded random ids (Adam at learning rate ``lr`` (1e-3),
    clip 1.0, eval mode so dropout
    is off, at most ``steps`` (300) steps) on the model itself inside ``restore.preserved``:
    weights, buffers, .grad, flags and random states come back bit for bit.

    Why: a model that cannot fit one batch cannot learn anything (output blind to the input, broken
    gradients). Thresholds: PASS when the loss falls by more than ``loss_drop`` (0.9) of its start;
    decoders: teacher-forced argmax must reproduce the sequence; non-finite loss FAIL. Fix: check
    that the output depends on the input and that gradients reach all layers (gradient_flow)."""
    import torch

    model = ctx.model
    length = inputs.clamp_len(model, OVERFIT_LEN)
    if length < 2:
        yield ctx.row(Status.SKIP, detail=f"the model's maximum length {length} leaves no next token to predict")
        return
    ids = inputs.token_ids(model, OVERFIT_BATCH, length, ctx.generator(301), ctx.device)
    with torch.no_grad(), inputs.eval_mode(model.module):
        probe = model.forward(ids)
    if not inputs.output_is_logits(model, probe):
        why = (
            f"the model returns hidden states of width {probe.shape[-1]}, not logits over its {model.vocab_size} "
            "token vocabulary: there is no token loss to overfit"
        )
        yield ctx.row(Status.SKIP, detail=why)
        return
    with preserved(model.module):
        losses, hits, total = _memorise(ctx, ids)
    yield from _overfit_rows(ctx, losses, hits, total, length)
    _overfit_figure(ctx, losses)


def _memorise(ctx: CheckContext, ids: torch.Tensor) -> tuple[list[float], int, int]:
    """(losses per step, hits, total) of Adam on the fixed batch (inside ``preserved``)."""
    model = ctx.model
    seed_forked(ctx.seed, ctx.device)
    # eval mode: dropout off, so the check measures whether the model CAN fit, not the noise
    with inputs.eval_mode(model.module):
        done = memorise(
            model.forward,
            model.module,
            ids,
            steps=int(ctx.threshold("steps")),
            lr=ctx.threshold("lr"),
            loss_drop=ctx.threshold("loss_drop"),
            next_token=model.kind in ("decoder", "seq2seq"),
        )
    return done.losses, done.hits, done.total


def _overfit_rows(ctx: CheckContext, losses: list[float], hits: int, total: int, length: int) -> Iterator[Row]:
    next_token = ctx.model.kind in ("decoder", "seq2seq")
    limit = ctx.threshold("loss_drop")
    steps = len(losses) - 1
    first, last = losses[0], losses[-1]
    drop = (first - last) / first if first > 0 and math.isfinite(last) else float("nan")
    how = "teacher-forced argmax at each position" if next_token else "argmax reconstruction of each input token"
    setup = (
        f"batch {OVERFIT_BATCH}x{length} of seeded random ids, Adam {ctx.threshold('lr')}, clip 1.0, eval mode "
        f"(dropout off), on the model itself, restored afterwards"
    )
    if not math.isfinite(last):
        why = f"loss became non-finite ({last}) after {steps} steps; {setup}"
        yield ctx.row(Status.FAIL, "loss_drop", drop, f"> {limit}", why)
        return
    status = Status.PASS if drop > limit else Status.FAIL
    why = (
        ""
        if status is Status.PASS
        else "; the model cannot fit one fixed batch: check that its output depends on its input and that "
        "gradients reach all layers (Tier 1 gradient_flow)"
    )
    detail = f"loss {first:.3f} -> {last:.3f} in {steps} steps; {setup}{why}"
    yield ctx.row(status, "loss_drop", round(drop, 4), f"> {limit}", detail)
    label = "reproduces_sequence" if next_token else "reproduces_tokens"
    rep = Status.PASS if hits == total else Status.FAIL
    detail = f"{how} matches {hits} of {total} target tokens after {steps} steps"
    if rep is Status.FAIL:
        detail += kind_guess_note(ctx.model)  # what is reproduced depends on the kind
    yield ctx.row(rep, label, f"{hits}/{total}", "all", detail)


def _overfit_figure(ctx: CheckContext, losses: list[float]) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(range(len(losses)), losses)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss on the fixed batch")
    ax.set_title("overfit one batch")
    fig.tight_layout()
    ctx.save_figure(fig, "loss")
