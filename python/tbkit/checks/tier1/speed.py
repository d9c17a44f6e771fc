"""The ``speed`` check (Tier 1)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Optional

from tbkit.checks import inputs as inp
from tbkit.checks import shared, timing
from tbkit.checks.base import CheckContext, Row, register
from tbkit.checks.numeric import (
    new_figure,
)
from tbkit.checks.spec import Threshold
from tbkit.checks.tier1.common import FAIL, PASS, WARN, forward_pair
from tbkit.checks.timing import machine_load

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

_Point = tuple[int, int, timing.Timing]  # (batch, length, its timings)

SPEED_BATCHES = (1, 2)  # shapes of the shared grid: their shared forward is the warm-up


@register(
    "speed",
    tier=1,
    summary="forward latency (all threads, >= 6 timings per shape): median with 95% CI, tokens/s",
    thresholds=(
        Threshold("min_timings", int, 6, "", "fewest timings per shape", positive=True),
        Threshold("seconds_per_shape", float, 0.005, "s", "time spent timing each shape beyond the minimum"),
        Threshold("latency_budget_ms", float, None, "ms", "a median forward latency above it FAILs", positive=True),
        Threshold("min_batch_speedup", float, 0.5, "", "batch 2 tokens/s below this multiple of batch 1 WARN"),
    ),
)
def check_speed(ctx: CheckContext) -> Iterator[Row]:
    """Forward latency (eval, no_grad, all torch threads) at batch {1, 2} x the shared odd length
    (17, or less for short models): median of at least ``min_timings`` (6: the fewest for which an
    order-statistic 95% interval of the median exists) timings per shape, more while ``seconds_per_shape``
    (0.005 s; the older option name ``speed_seconds_per_point`` is an alias) lasts, with a 95% order-statistic confidence
    interval of the median, and tokens/s.

    Why: latency and throughput decide what a model costs to serve. A measurement judges the
    model, never the machine: how noisy the machine was goes into the detail (and the report's
    environment block), never into the status. Thresholds: median above ``latency_budget_ms``
    (``--latency-budget-ms``; none by default) FAIL; tokens/s at
    the larger batch below ``min_batch_speedup`` (0.5) x the smaller batch's (the upper end of the
    confidence interval of the round-by-round ratio of interleaved timings) WARN: batching makes this model slower. Fix: look for
    per-row Python loops or batch-dependent work in forward."""
    import torch

    threads = torch.get_num_threads()
    T = shared.probe_length(ctx)
    timings = _time_forwards(ctx, SPEED_BATCHES, T)
    points = [(B, T, t) for B, t in zip(SPEED_BATCHES, timings)]
    for B, T, timed in points:
        yield _speed_row(ctx, B, T, timed, threads)
    yield from _speed_scaling(ctx, points)
    _speed_figure(ctx, points, threads)


def _time_forwards(ctx: CheckContext, batches: tuple[int, ...], T: int) -> list[timing.Timing]:
    """A Timing per batch size, measured interleaved (see ``timing.measure_interleaved``)."""
    import torch

    lm, dev = ctx.model, ctx.device

    def step_for(B: int) -> Callable[[], None]:
        first, dec = _speed_inputs(ctx, B, T)

        def step() -> None:
            with torch.no_grad():
                lm.forward(first, decoder_input_ids=dec)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        return step

    steps = [step_for(B) for B in batches]
    min_n = max(2, int(ctx.threshold("min_timings")))  # never one: a spread of one sample is not a measurement
    budget = float(ctx.threshold("seconds_per_shape"))
    with inp.eval_mode(lm.module):
        for B, step in zip(batches, steps):
            if B <= shared.MAX_BATCH:
                shared.forward(ctx, B, T)  # the shared forward (run once per run) is the warm-up
            else:
                step()  # warm-up: allocator, kernel selection, lazy init
        return timing.measure_interleaved(steps, min_n, budget)


def _speed_inputs(ctx: CheckContext, B: int, T: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    if B <= shared.MAX_BATCH:
        return shared.model_inputs(*shared.batch(ctx, B, T))
    gen = ctx.generator(10)
    return forward_pair(ctx.model, inp.token_ids(ctx.model, B, T, gen, ctx.device), ctx.device, gen)


def _speed_row(ctx: CheckContext, B: int, T: int, t: timing.Timing, threads: int) -> Row:
    med = t.median
    lo, hi = t.median_ci()
    spread = (hi - lo) / med if med > 0 else 0.0
    detail = (
        f"{t.n} timings, median {med * 1e3:.3g} ms, {t.ci_coverage():.0%} CI of the median [{lo * 1e3:.3g}, "
        f"{hi * 1e3:.3g}] ms (width {spread:.0%} of the median), {B * T / med:,.0f} tokens/s, {threads} threads, "
        f"{ctx.device.type}; machine while measuring: {machine_load()}"
    )
    if spread > 0.2:
        detail += " (a wide interval: other work shared the machine; the median is still the model's)"
    budget = ctx.threshold("latency_budget_ms")
    metric = f"median ms (B={B}, T={T})"
    if budget is None:
        return ctx.row(PASS, metric, round(med * 1e3, 4), "", detail + ". No latency budget given")
    over = med * 1e3 > float(budget)
    why = f": above the latency budget of {budget} ms" if over else ""
    return ctx.row(FAIL if over else PASS, metric, round(med * 1e3, 4), f"<= {budget} ms", detail + why)


def _speed_scaling(ctx: CheckContext, points: list[_Point]) -> Iterator[Row]:
    """A property of the model: tokens/s should not fall when the batch grows. Judged on the
    round-by-round ratios of the interleaved timings (a burst of other work hits both sides of a
    round), and only when even the upper end of the ratio's confidence interval is below
    ``min_batch_speedup``."""
    (b1, _, t1), (b2, _, t2) = points[0], points[-1]
    factor = ctx.threshold("min_batch_speedup")
    rounds = timing.Timing([(b2 * x1) / (b1 * x2) for x1, x2 in zip(t1.times, t2.times)])
    ratio, (lo, hi) = rounds.median, rounds.median_ci()
    metric = "tokens/s ratio, larger/smaller batch"
    detail = (
        f"tokens/s at batch {b2} / at batch {b1}: median {ratio:.2f} over {rounds.n} interleaved rounds, "
        f"{rounds.ci_coverage():.0%} CI [{lo:.2f}, {hi:.2f}]; batching should not make the model slower per token"
    )
    if hi < factor:
        why = (
            f": even the upper end of the interval is below {factor:g}: batch {b2} processes fewer tokens per "
            f"second than batch {b1}. Look for per-row Python loops or batch-dependent work"
        )
        yield ctx.row(WARN, metric, round(ratio, 3), f">= {factor:g}", detail + why)
    else:
        yield ctx.row(PASS, metric, round(ratio, 3), f">= {factor:g}", detail)


def _speed_figure(ctx: CheckContext, points: list[_Point], threads: int) -> None:
    tokens_per_s = [(f"B{B}xT{T}", B * T / t.median) for B, T, t in points]
    ctx.save_figure(functools.partial(_draw_speed, tokens_per_s, ctx.device.type, threads), "speed_sweep")


def _draw_speed(tokens_per_s: list[tuple[str, float]], device_type: str, threads: int) -> Figure:
    fig = new_figure()
    ax = fig.add_subplot()
    ax.bar([label for label, _ in tokens_per_s], [v for _, v in tokens_per_s], color="#c44e52")
    ax.set_ylabel("tokens / s")
    ax.set_title(f"Forward throughput ({device_type}, {threads} threads)")
    return fig
