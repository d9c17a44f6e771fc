"""The ``shape`` check (Tier 1)."""

from __future__ import annotations

from collections.abc import Iterator

from tbkit.checks import inputs as inp
from tbkit.checks import shared
from tbkit.checks.base import CheckContext, Row, register
from tbkit.checks.numeric import (
    describe_error,
)
from tbkit.checks.tier1.common import FAIL, PASS, SKIP, WARN, forward_pair

SHAPE_BATCHES = (1, 2, 7)


def _shape_lengths(ctx: CheckContext) -> list[int]:
    longest = inp.usable_max_len(ctx.model)
    return sorted({n for n in (1, 2, shared.probe_length(ctx), longest) if n <= longest})


@register("shape", tier=1, summary="batch {1,2,7} x length {1,2,odd,max_len}: output (B,T,V|H); max_len+1")
def check_shape(ctx: CheckContext) -> Iterator[Row]:
    """Every batch {1, 2, 7} x length {1, 2, an odd length, max_len} gives an output of shape
    (B, T, V) (logits) or (B, T, H) (hidden states), the same last dimension each time; one token
    past max_len must raise a clear error or work.

    Why: a model that breaks at batch 1 or length 1, or returns garbage for too-long inputs,
    fails in generation and serving long after training looked fine. Thresholds: none (every
    shape must be right). Fix: the row names the (B, T) that raised or came out wrong."""
    yield from _shape_grid(ctx)
    yield from _shape_past_max_len(ctx)


def _shape_grid(ctx: CheckContext) -> Iterator[Row]:
    lm = ctx.model
    lengths = _shape_lengths(ctx)
    failures, last_dims, tried = [], set(), 0
    for B in SHAPE_BATCHES:
        for T in lengths:
            tried += 1
            try:
                out = shared.forward(ctx, B, T)
            except Exception as err:  # the model's error is the finding
                failures.append(f"(B={B}, T={T}) raised {describe_error(err)}")
                continue
            if out.dim() != 3 or tuple(out.shape[:2]) != (B, T):
                failures.append(f"(B={B}, T={T}) gave shape {tuple(out.shape)}, expected ({B}, {T}, V or H)")
                continue
            last_dims.add(int(out.shape[-1]))
    note = inp.length_note(lm)
    note = f". {note}" if note else ""
    if failures:
        detail = "; ".join(failures) + note
        yield ctx.row(FAIL, "shapes correct", f"{tried - len(failures)}/{tried}", "all", detail)
    elif len(last_dims) > 1:
        detail = f"the last output dimension changes with the input: {sorted(last_dims)}"
        yield ctx.row(FAIL, "shapes correct", f"0/{tried}", "all", detail)
    else:
        (width,) = last_dims
        what = "V (logits over the vocabulary)" if width == lm.vocab_size else f"H = {width} (hidden states)"
        detail = f"batch 1, 2, 7 x length {', '.join(map(str, lengths))}: every output is (B, T, {what})"
        if lm.kind == "decoder" and width != lm.vocab_size:
            detail += "; a decoder usually ends in an LM head of size V: this one does not"
        yield ctx.row(PASS, "shapes correct", f"{tried}/{tried}", "all", detail + note)


def _shape_past_max_len(ctx: CheckContext) -> Iterator[Row]:
    """One token past the limit must either work or fail with an error: what it must not do is
    return garbage silently. Not tried off-CPU: an out-of-range index on CUDA is a device-side
    assert that leaves CUDA unusable for the rest of the process (the notebook would need a restart)."""
    import torch

    lm, dev = ctx.model, ctx.device
    if not lm.max_len:
        yield ctx.row(SKIP, "max_len + 1", None, "", "no maximum length found on the model: nothing to exceed")
        return
    if dev.type != "cpu":
        why = (
            f"not tried on {dev.type}: an out-of-range position there is a device-side assert that breaks "
            "CUDA for the whole process; run with device='cpu' to probe it"
        )
        yield ctx.row(SKIP, "max_len + 1", None, "", why)
        return
    T = int(lm.max_len) + 1
    gen = ctx.generator(1)
    enc, dec = forward_pair(lm, inp.token_ids(lm, 1, T, gen, dev), dev, gen)
    with inp.eval_mode(lm.module):
        try:
            out = inp.forward(lm, enc, decoder_ids=dec)
        except Exception as err:
            detail = f"length {T} raises {describe_error(err)}"
            yield ctx.row(PASS, "max_len + 1", "fails clearly", "fails clearly or works", detail)
            return
    finite = bool(torch.isfinite(out).all())
    if out.dim() == 3 and tuple(out.shape[:2]) == (1, T) and finite:
        detail = f"length {T} gives finite output of shape {tuple(out.shape)}: max_len {lm.max_len} is not a hard limit"
        yield ctx.row(PASS, "max_len + 1", "works", "fails clearly or works", detail)
    else:
        detail = (
            f"length {T} returned shape {tuple(out.shape)} (finite: {finite}) without an error: inputs that are "
            "too long should raise a clear error"
        )
        yield ctx.row(WARN, "max_len + 1", "silent garbage", "fails clearly or works", detail)
