"""The ``determinism`` check (Tier 1)."""

from __future__ import annotations

import math
from collections.abc import Iterator

from tbkit.checks import shared
from tbkit.checks.base import CheckContext, Row, register
from tbkit.checks.numeric import (
    dtype_scale,
    fmt,
)
from tbkit.checks.spec import Threshold
from tbkit.checks.tier1.common import FAIL, PASS


@register(
    "determinism",
    tier=1,
    summary="two eval forwards on the same input are identical",
    thresholds=(Threshold("max_diff", float, 1e-6, "absolute", "largest allowed |run1 - run2|"),),
)
def check_determinism(ctx: CheckContext) -> Iterator[Row]:
    """Two eval forwards of the same input give the same output.

    Why: randomness left on in eval (``F.dropout(..., training=True)``, sampling in forward) makes
    every evaluation and every other check noisy. Thresholds: max |run1 - run2| <= ``max_diff``
    (1e-6, widened for half precision). Fix: use nn.Dropout modules or pass training=self.training."""
    d = shared.repeat_difference(ctx)
    tol = ctx.threshold("max_diff") * dtype_scale(ctx.model)
    metric = "max |run1 - run2|"
    if math.isnan(d):
        yield ctx.row(FAIL, metric, d, f"<= {tol:.0e}", "the outputs hold NaN/Inf")
    elif d <= tol:
        yield ctx.row(PASS, metric, d, f"<= {tol:.0e}", "two eval forwards agree")
    else:
        why = (
            f"two eval forwards on the same input differ by {fmt(d)}: something random stays on in eval "
            "(F.dropout(..., training=True), sampling in forward, or uninitialised memory). Use nn.Dropout "
            "modules or pass training=self.training"
        )
        yield ctx.row(FAIL, metric, d, f"<= {tol:.0e}", why)
