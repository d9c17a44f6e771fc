"""The ``memory`` check (Tier 1)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING

from tbkit.checks import inputs as inp
from tbkit.checks import shared
from tbkit.checks.base import CheckContext, Row, register
from tbkit.checks.numeric import (
    describe_error,
    new_figure,
)
from tbkit.checks.spec import Threshold
from tbkit.checks.tier1.common import FAIL, PASS

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

    from tbkit.sources.loaded import LoadedModel

_Point = tuple[int, int, float]  # (batch, length, activation MB)


def _sweep(lm: LoadedModel) -> list[tuple[int, int]]:
    """Length max_len/4 and max_len at batch 1, and max_len at batch 2: the growth with length
    and with batch (activation memory is linear in the batch, so two batch sizes show the slope)."""
    longest = inp.usable_max_len(lm)
    short = max(1, longest // 4)
    return sorted({(1, short), *((b, longest) for b in shared.MEASURED_BATCHES)})


def _memory_method(dev: torch.device) -> str:
    if dev.type == "cuda":
        return "CUDA peak allocated above the resident model during a grad-mode forward"
    return (
        "bytes of the tensors autograd saves for backward in a grad-mode forward (saved_tensors_hooks, "
        "distinct storages, parameters excluded) plus the output; a CPU has no allocator peak to read"
    )


@register(
    "memory",
    tier=1,
    summary="parameter/buffer MB and activation memory over a (B, T) sweep",
    thresholds=(
        Threshold(
            "budget_mb", float, None, "MB", "model + peak activations above it FAIL (none: information)", positive=True
        ),
    ),
)
def check_memory(ctx: CheckContext) -> Iterator[Row]:
    """Parameter and buffer MB, and the activation memory of a grad-mode forward at (batch, length)
    (1, max_len/4), (1, max_len) and (2, max_len) (CUDA: peak allocated; CPU: bytes autograd saves).

    Why: what fits decides batch size and sequence length before any training starts.
    Thresholds: ``budget_mb`` (``--memory-budget-mb``; none by default): model + peak
    activations above it FAIL; without a budget the row is information. Fix: smaller batch or
    length, activation checkpointing, lower precision."""
    lm = ctx.model
    module = lm.module
    param_mb = sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20
    buffer_mb = sum(b.numel() * b.element_size() for b in module.buffers()) / 2**20
    detail = f"parameters {param_mb:.3f} MB, buffers {buffer_mb:.3f} MB"
    yield ctx.row(PASS, "parameters + buffers MB", round(param_mb + buffer_mb, 3), "", detail)
    points: list[_Point] = []
    for B, T in _sweep(lm):
        try:  # at max_len these are the grad-mode forwards shape already ran (see shared.py)
            points.append((B, T, shared.activation_bytes(ctx, B, T) / 2**20))
        except Exception as err:  # the model failing in grad mode is the finding
            why = f"a grad-mode forward (B={B}, T={T}) raised {describe_error(err)}"
            yield ctx.row(FAIL, "peak activation MB", None, "", why)
            return
    yield _memory_verdict(ctx, points, param_mb + buffer_mb)
    _memory_figure(ctx, points)


def _memory_verdict(ctx: CheckContext, points: list[_Point], model_mb: float) -> Row:
    peak = max(mb for _, _, mb in points)
    sweep = ", ".join(f"B={B} T={T}: {mb:.2f} MB" for B, T, mb in points)
    method = _memory_method(ctx.device)
    budget = ctx.threshold("budget_mb")
    if budget is None:
        why = f"{sweep}. Measured as {method}. No budget given (option memory.budget_mb or --memory-budget-mb to enforce one)"
        return ctx.row(PASS, "peak activation MB", round(peak, 3), "", why)
    need = model_mb + peak
    status = FAIL if need > float(budget) else PASS
    why = f"model + peak activations = {need:.2f} MB; {sweep}. Measured as {method}"
    return ctx.row(status, "peak activation MB", round(peak, 3), f"model + activations <= {budget} MB", why)


def _memory_figure(ctx: CheckContext, points: list[_Point]) -> None:
    ctx.save_figure(functools.partial(_draw_memory, points, ctx.device.type), "memory_sweep")


def _draw_memory(points: list[_Point], device_type: str) -> Figure:
    fig = new_figure()
    ax = fig.add_subplot()
    for B in sorted({b for b, _, _ in points}):
        xs = [(T, mb) for b, T, mb in points if b == B]
        ax.plot([x for x, _ in xs], [y for _, y in xs], marker="o", label=f"batch {B}")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("activation MB")
    ax.set_title(f"Activation memory ({device_type})")
    ax.legend()
    return fig
