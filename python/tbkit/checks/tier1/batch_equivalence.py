"""The ``batch_equivalence`` check (Tier 1)."""

from __future__ import annotations

import math
from collections.abc import Iterator

from tbkit.checks import inputs as inp
from tbkit.checks import shared
from tbkit.checks.base import CheckContext, Row, register
from tbkit.checks.numeric import (
    dtype_scale,
    fmt,
    max_abs_diff,
    output_scale,
)
from tbkit.checks.spec import Threshold
from tbkit.checks.tier1.common import FAIL, PASS, WARN


@register(
    "batch_equivalence",
    tier=1,
    summary="row i of a batched forward equals the same row run alone",
    thresholds=(
        Threshold("pass_rel", float, 1e-5, "relative", "max |batched - alone| / max(1, |output|) for PASS"),
        Threshold("warn_rel", float, 1e-3, "relative", "above it FAIL; between pass_rel and it WARN"),
    ),
)
def check_batch_equivalence(ctx: CheckContext) -> Iterator[Row]:
    """Rows 0 and 1 of a batch of 7 (the shared shape batch) give the same outputs run alone and in
    a batch of 2.

    Why: rows that influence each other (batch statistics in eval, a mean over dim 0, a mask
    broadcast across the batch) make a model's answer depend on what else is in the batch.
    Thresholds: max |batched - alone| relative to max(1, |output|): ``pass_rel`` (1e-5, fp32
    rounding) PASS, up to ``warn_rel`` (1e-3) WARN, above FAIL; NaN/Inf FAIL. Widened by the
    dtype's epsilon for half precision. When ``determinism`` finds the model random in eval, the
    row says randomness is the likely cause. Fix: per-row computations only; no batch statistics
    in eval."""
    import torch

    lm = ctx.model
    T = shared.probe_length(ctx)
    full = shared.forward(ctx, shared.MAX_BATCH, T)
    ids, enc = shared.batch(ctx, 2, T)
    # rows 0 and 1 of the batch of 7 against each row alone (row 0 alone is the shared (1, T)
    # forward) and against the batch of 2 (shared too): one new forward in all
    with inp.eval_mode(lm.module):
        first, dec = shared.model_inputs(ids[1:2], None if enc is None else enc[1:2])
        row1 = inp.forward(lm, first, decoder_ids=dec, seed=ctx.seed)
    alone = torch.cat([shared.forward(ctx, 1, T), row1])
    diff = max(max_abs_diff(full[:2], alone), max_abs_diff(full[:2], shared.forward(ctx, 2, T)))
    yield from _batch_equivalence_row(ctx, diff, diff / output_scale(full), T, 2)


def _batch_equivalence_row(ctx: CheckContext, diff: float, rel: float, T: int, rows: int) -> Iterator[Row]:
    k = dtype_scale(ctx.model)
    pass_rel, warn_rel = ctx.threshold("pass_rel") * k, ctx.threshold("warn_rel") * k
    metric = "max relative difference"
    detail = (
        f"rows 0-{rows - 1} of a batch of {shared.MAX_BATCH} x length {T} vs each row alone and vs a batch of "
        f"{rows}: max |batched - alone| = {fmt(diff)}, {fmt(rel)} relative to max(1, |output|)"
    )
    random_note = ""
    if not math.isnan(diff) and diff > 0 and shared.repeat_difference(ctx) > 0:
        random_note = (
            "; two eval forwards of the same input also differ (see determinism): the model is random in eval, "
            "which alone explains this difference. Fix determinism first"
        )
    if math.isnan(diff):
        yield ctx.row(FAIL, metric, rel, "finite", detail + ": the outputs hold NaN or Inf")
    elif rel <= pass_rel:
        yield ctx.row(PASS, metric, rel, f"<= {pass_rel:.0e}", detail)
    elif rel <= warn_rel:
        why = random_note or ": more than rounding; check for batch-dependent kernels or statistics"
        yield ctx.row(WARN, metric, rel, f"<= {pass_rel:.0e}", detail + why)
    else:
        why = random_note or (
            ": rows of a batch influence each other (batch statistics in eval, a mean over dim 0, or a mask "
            "broadcast across the batch)"
        )
        yield ctx.row(FAIL, metric, rel, f"<= {warn_rel:.0e}", detail + why)
