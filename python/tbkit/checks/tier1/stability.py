"""The ``stability`` check (Tier 1)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Optional

from tbkit.checks import inputs as inp
from tbkit.checks import shared
from tbkit.checks.base import CheckContext, Row, register
from tbkit.checks.numeric import (
    describe_error,
    log_scale,
    new_figure,
)
from tbkit.checks.spec import Threshold
from tbkit.checks.tier1.common import FAIL, PASS, SKIP, WARN, forward_pair

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure


@register(
    "stability",
    tier=1,
    summary="random ids, one repeated token, length 1 and max_len, bf16 autocast: finite, |logit| < 1e4",
    thresholds=(Threshold("max_abs_output", float, 1e4, "absolute", "max |output| at or above it WARN"),),
)
def check_stability(ctx: CheckContext) -> Iterator[Row]:
    """Outputs stay finite and moderate on random ids, one repeated token, length 1, max_len and
    under bf16 autocast.

    Why: NaN/Inf at some length or precision ends a training run hours in; huge logits saturate the
    softmax and overflow in half precision. Thresholds: non-finite FAIL (bf16 autocast only WARN);
    max |output| >= ``max_abs_output`` (1e4) WARN. Fix: scale the output / init down; guard
    divisions and masked softmax rows."""
    lm, dev = ctx.model, ctx.device
    longest, T = inp.usable_max_len(lm), shared.probe_length(ctx)
    state: dict[str, Any] = {"fp32_finite": True, "histogram": None}
    yield from _stability_case(ctx, "random ids", lambda: shared.forward(ctx, 2, T), (2, T), state)
    yield from _stability_case(ctx, "one repeated token", lambda: _repeated_token_forward(ctx, T), (1, T), state)
    yield from _stability_case(ctx, "length 1", lambda: shared.forward(ctx, 2, 1), (2, 1), state)
    name = f"length {longest} (max)"
    yield from _stability_case(ctx, name, lambda: shared.forward(ctx, 1, longest), (1, longest), state)
    autocast, err = _bf16_autocast(dev)
    if autocast is None:
        yield ctx.row(
            SKIP, "max |output|: bf16 autocast", None, "", f"bf16 autocast is not available on {dev.type}: {err}"
        )
    else:
        forward = lambda: _autocast_forward(ctx, autocast, T)  # noqa: E731
        yield from _stability_case(ctx, "bf16 autocast", forward, (1, T), state, bf16=True)
    _stability_histogram(ctx, state["histogram"])


def _repeated_token_forward(ctx: CheckContext, T: int) -> torch.Tensor:
    import torch

    lm = ctx.model
    token = int(inp.token_ids(lm, 1, 1, ctx.generator(5))[0, 0])
    ids = torch.full((1, T), token, dtype=torch.long, device=ctx.device)
    enc, dec = forward_pair(lm, ids, ctx.device, ctx.generator(5))
    with inp.eval_mode(lm.module):
        return inp.forward(lm, enc, decoder_ids=dec, seed=ctx.seed)


def _bf16_autocast(dev: torch.device) -> tuple[Optional[torch.autocast], str]:
    import torch

    try:
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16), ""
    except Exception as err:  # the device has no bf16 autocast: nothing to judge
        return None, describe_error(err)


def _autocast_forward(ctx: CheckContext, autocast: torch.autocast, T: int) -> torch.Tensor:
    first, dec = shared.model_inputs(*shared.batch(ctx, 1, T))
    with inp.eval_mode(ctx.model.module), autocast:
        return inp.forward(ctx.model, first, decoder_ids=dec, seed=ctx.seed)


def _stability_case(
    ctx: CheckContext,
    name: str,
    forward: Callable[[], torch.Tensor],
    shape: tuple[int, int],
    state: dict[str, Any],
    bf16: bool = False,
) -> Iterator[Row]:
    import torch

    metric, limit = f"max |output|: {name}", ctx.threshold("max_abs_output")
    soft = WARN if bf16 else FAIL  # non-finite under bf16 autocast is a warning only (docs/checks.md, stability)
    try:
        out = forward().float()
    except Exception as err:
        state["fp32_finite"] = state["fp32_finite"] and bf16
        yield ctx.row(soft, metric, None, f"< {limit:.0e}", f"the forward raised: {describe_error(err)}")
        return
    finite = torch.isfinite(out)
    if state["histogram"] is None and not bf16:
        state["histogram"] = out[finite].flatten().cpu()
    if not bool(finite.all()):
        where = (~finite).any(dim=-1).nonzero()
        first = tuple(int(v) for v in where[0]) if len(where) else ()
        detail = (
            f"{int((~finite).sum())} of {out.numel()} output values are NaN/Inf (first at batch, position {first}) "
            f"for {name} (shape {tuple(shape)})"
        )
        if bf16:
            detail += (
                ": bf16 overflow; the same input in the model's own precision is finite"
                if state["fp32_finite"]
                else ": the model's own precision fails too (rows above)"
            )
        state["fp32_finite"] = state["fp32_finite"] and bf16
        yield ctx.row(soft, metric, float("nan"), "finite", detail)
        return
    peak = float(out.abs().max())
    if peak >= limit:
        why = f"outputs reach {peak:.3g}: near fp16/bf16 overflow and a saturated softmax; check the output scaling and the init"
        yield ctx.row(WARN, metric, peak, f"< {limit:.0e}", why)
    else:
        yield ctx.row(PASS, metric, peak, f"< {limit:.0e}", f"finite for {name} (shape {tuple(shape)})")


def _stability_histogram(ctx: CheckContext, histogram: Optional[torch.Tensor]) -> None:
    if histogram is None or not histogram.numel():
        return
    ctx.save_figure(functools.partial(_draw_histogram, histogram, ctx.generator(5)), "output_distribution")


def _draw_histogram(histogram: torch.Tensor, generator: torch.Generator) -> Figure:
    import torch

    fig = new_figure()
    ax = fig.add_subplot()
    sample = histogram[torch.randperm(histogram.numel(), generator=generator)[:200_000]].numpy()
    # one filled outline, not 80 bar patches: the same picture in a third of the drawing time
    counts, _, _ = ax.hist(sample, bins=80, color="#4c72b0", histtype="stepfilled")
    log_scale(ax, "y", [float(c) for c in counts])
    ax.set_xlabel("output value (logit or hidden state)")
    ax.set_ylabel("count")
    ax.set_title("Output distribution on random ids")
    return fig
