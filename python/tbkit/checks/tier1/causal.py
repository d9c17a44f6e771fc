"""The ``causal`` check (Tier 1)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Optional

from tbkit.checks import inputs as inp
from tbkit.checks import shared
from tbkit.checks.base import CheckContext, Row, register
from tbkit.checks.numeric import (
    describe_error,
    dtype_scale,
    fmt,
    kind_guess_note,
    max_abs_diff,
)
from tbkit.checks.spec import Threshold
from tbkit.checks.tier1.common import FAIL, PASS, SKIP, WARN

if TYPE_CHECKING:
    import torch


@register(
    "causal",
    tier=1,
    summary="decoders: changing token s must not move outputs at t < s (grad, no_grad, inference_mode)",
    thresholds=(Threshold("max_change", float, 1e-6, "absolute", "largest allowed change of an output at t < s"),),
)
def check_causal(ctx: CheckContext) -> Iterator[Row]:
    """Decoders (and the decoder side of seq2seq): changing the token at position s must not move
    any output at t < s, in grad mode, under ``no_grad`` and under ``inference_mode``.

    Why: a model that sees the future trains to a loss it can never reach when generating; fused
    fast paths can silently drop ``is_causal`` under no_grad, so every grad mode is tried.
    Thresholds: max change at t < s <= ``max_change`` (1e-6, widened for half precision).
    Encoders: SKIP (bidirectional by design). When the kind was inferred, a FAIL says so and how to
    declare it. Fix: mask keys j > i with an explicit causal mask."""
    lm = ctx.model
    if lm.kind == "encoder":
        why = (
            f"bidirectional (encoder): not applicable, every position may see every other one (kind "
            f"{lm.kind_reason}). If this model is meant to generate text, load it with kind='decoder' (--kind decoder)"
        )
        yield ctx.row(SKIP, "causality", None, "", why)
        return
    T = shared.probe_length(ctx)
    if T < 2:
        yield ctx.row(SKIP, "causality", None, "", f"maximum length {T}: no earlier position to protect")
        return
    # A model that moves its own weights when called gives different outputs for identical calls,
    # which must be named as such, not read as a leak. Its weights are only compared (two passes
    # over every parameter) when identical calls differ or a leak shows: other models never pay.
    if _identical_calls_differ(ctx):
        drift = _weight_drift_row(ctx)
        if drift is not None:
            yield drift
            return
    ids, enc = shared.batch(ctx, 1, T)  # one sequence: a leak is structural, every sequence shows it
    alt = inp.different_tokens(lm, ids, ctx.generator(3))
    rows: list[Row] = []
    with inp.eval_mode(lm.module):
        for mode in inp.MODES:
            rows += _causal_mode(ctx, mode, ids, enc, alt)
    drift = _weight_drift_row(ctx) if any(r.status is FAIL for r in rows) else None
    yield from [drift] if drift is not None else rows  # weights that move on some calls only


def _identical_calls_differ(ctx: CheckContext) -> bool:
    try:
        return shared.repeat_difference(ctx) != 0  # NaN (non-finite outputs) counts as differing
    except Exception:  # the model's own error: each grad mode below meets it and reports it
        return False


def _weight_drift_row(ctx: CheckContext) -> Optional[Row]:
    """The FAIL row for a model whose eval forward changes its parameters, or None."""
    try:
        drifted = shared.weight_drift(ctx)
    except Exception:  # the forward raised: the grad modes report that
        return None
    if not drifted:
        return None
    shown = ", ".join(drifted[:5]) + (f" and {len(drifted) - 5} more" if len(drifted) > 5 else "")
    why = (
        f"the model changes its own weights when called ({shown} changed during one eval forward), so two "
        "identical calls give different outputs and causality cannot be judged. A forward must not update "
        "parameters (an in-place op on a weight, an optimizer step or a weight update inside forward?)"
    )
    return ctx.row(FAIL, "weights unchanged by forward", len(drifted), "0 parameters", why)


def _causal_outputs(
    ctx: CheckContext,
    mode: str,
    ids: torch.Tensor,
    enc: Optional[torch.Tensor],
    alt: torch.Tensor,
    positions: list[int],
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(output of ``ids``, [output with position s changed, for each s]).

    A deterministic model whose batch rows are independent gets one forward for all variants (rows
    stacked in one batch, so every comparison is between rows of the same call); a model that is
    random in eval, or whose rows influence each other (batch_equivalence judges that), gets one
    seeded forward per variant: its randomness or batch mixing is not taken for a causal leak."""
    import torch

    variants = [ids]
    for s in positions:
        x = ids.clone()
        x[:, s] = alt[:, s]
        variants.append(x)
    lm = ctx.model
    if shared.repeat_difference(ctx) == 0 and shared.rows_independent(ctx):
        stacked = torch.cat(variants)
        first, dec = shared.model_inputs(stacked, None if enc is None else enc.repeat(len(variants), 1))
        out = inp.forward(lm, first, decoder_ids=dec, mode=mode, seed=ctx.seed)
        outs: Sequence[torch.Tensor] = torch.split(out, ids.shape[0])  # = out.split(...), which torch leaves untyped
    else:
        separate: list[torch.Tensor] = []
        for x in variants:
            first, dec = shared.model_inputs(x, enc)
            separate.append(inp.forward(lm, first, decoder_ids=dec, mode=mode, seed=ctx.seed))
        outs = separate
    return outs[0], list(outs[1:])


def _causal_mode(
    ctx: CheckContext, mode: str, ids: torch.Tensor, enc: Optional[torch.Tensor], alt: torch.Tensor
) -> Iterator[Row]:
    """One grad mode: perturb positions {1, T/2, T-1} one at a time and find the first leak."""
    import torch

    T = ids.shape[1]
    tol = ctx.threshold("max_change") * dtype_scale(ctx.model)
    metric = f"max change at t < s ({mode})"
    positions = sorted({1, T // 2, T - 1})
    try:
        base, outs = _causal_outputs(ctx, mode, ids, enc, alt, positions)
    except Exception as err:
        yield ctx.row(FAIL, metric, None, f"<= {tol:.0e}", _causal_error(ctx, mode, err))
        return
    if not bool(torch.isfinite(base).all()):
        why = f"the outputs hold NaN/Inf at length {T} under {mode}, so causality cannot be judged (see stability)"
        yield ctx.row(FAIL, metric, float("nan"), f"<= {tol:.0e}", why)
        return
    worst, leak, moved_at_s = 0.0, None, False
    for s, out in zip(positions, outs):
        d = max_abs_diff(out[:, :s], base[:, :s])
        moved_at_s = moved_at_s or max_abs_diff(out[:, s:], base[:, s:]) > 0
        if (math.isnan(d) or d > tol) and leak is None:
            per_t = (out[:, :s].float() - base[:, :s].float()).abs().amax(dim=(0, 2))
            leak = (int((per_t.isnan() | (per_t > tol)).nonzero()[0]), s, d)
        worst = d if math.isnan(d) else (worst if math.isnan(worst) else max(worst, d))
    yield _causal_verdict(ctx, metric, tol, worst, leak, moved_at_s, positions, T, mode)


def _causal_error(ctx: CheckContext, mode: str, err: Exception) -> str:
    hint = (
        ". is_causal was used without a mask: torch raises in grad mode and, under no_grad, its "
        "fused path silently drops causality. Pass an explicit causal mask"
        if "is_causal" in str(err)
        else ". A decoder must run in every grad mode"
    )
    return f"the forward raised under {mode}: {describe_error(err)}{hint}{kind_guess_note(ctx.model)}"


def _causal_verdict(
    ctx: CheckContext,
    metric: str,
    tol: float,
    worst: float,
    leak: Optional[tuple[int, int, float]],
    moved_at_s: bool,
    positions: list[int],
    T: int,
    mode: str,
) -> Row:
    side = "decoder input" if ctx.model.kind == "seq2seq" else "input"
    if leak is not None:
        t, s, d = leak
        detail = (
            f"changing {side} token {s} moved the output at position {t} (earlier outputs by up to {fmt(d)}) "
            f"under {mode}: the model sees the future. Mask keys j > i (e.g. "
            "nn.Transformer.generate_square_subsequent_mask) and pass the mask explicitly; is_causal alone is "
            "ignored by fused no_grad paths" + kind_guess_note(ctx.model)
        )
        return ctx.row(FAIL, metric, worst, f"<= {tol:.0e}", detail)
    if not moved_at_s:
        detail = (
            f"no output moved at all when {side} tokens {positions} changed: the output does not depend on those "
            "tokens, so causality could not be tested"
        )
        return ctx.row(WARN, metric, worst, f"<= {tol:.0e}", detail)
    detail = f"{side} positions {positions} perturbed (length {T}): earlier outputs unchanged"
    return ctx.row(PASS, metric, worst, f"<= {tol:.0e}", detail)
