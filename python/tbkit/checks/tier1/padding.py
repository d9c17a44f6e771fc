"""The ``padding`` check (Tier 1)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tbkit.checks import inputs as inp
from tbkit.checks import shared
from tbkit.checks.base import CheckContext, Row, register
from tbkit.checks.measure import establish, measure_mask, register_mask_probe
from tbkit.checks.numeric import (
    describe_error,
    dtype_scale,
    fmt,
    max_abs_diff,
    output_scale,
)
from tbkit.checks.spec import Threshold
from tbkit.checks.tier1.common import FAIL, PASS, SKIP, WARN

if TYPE_CHECKING:
    import torch

# (row alone, padded batch, batch with other pad content): real positions and whole outputs
_Outputs = tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]


@register(
    "padding",
    tier=1,
    summary="right padding and pad content leave real positions unchanged (grad, no_grad)",
    thresholds=(
        Threshold("pass_rel", float, 1e-5, "relative", "max change at real positions / max(1, |output|) for PASS"),
        Threshold("warn_rel", float, 1e-3, "relative", "above it FAIL; between pass_rel and it WARN"),
    ),
)
def check_padding(ctx: CheckContext) -> Iterator[Row]:
    """Right padding must leave the real positions unchanged, and so must changing the tokens
    under the padding; in grad mode and under no_grad. Decoders: a left-padded input (batched
    generation) must keep real positions finite.

    Why: training batches are padded; a mask that is not honoured makes every padded row learn
    from pad tokens, and fully masked rows (softmax over nothing) turn into NaN. The mask is passed
    under the first parameter of forward named attention_mask, mask, key_padding_mask,
    src_key_padding_mask or padding_mask (the row says which, and the convention used).
    Thresholds: change relative to max(1, |output|) <= ``pass_rel`` (1e-5) PASS, <= ``warn_rel``
    (1e-3) WARN, else FAIL; NaN in real positions FAIL; no mask parameter WARN. Fix: turn the mask
    into a key padding mask in every attention layer; use a large finite negative, not -inf."""
    lm = establish(ctx)  # the mask convention, measured on the inputs below (done once per run)
    name = inp.mask_argument(lm)
    if name is None:
        yield ctx.row(WARN, "attention_mask", "not accepted", "accepted", _no_mask_text())
        return
    T = shared.probe_length(ctx)
    if T < 2:
        yield ctx.row(SKIP, "real positions", None, "", f"maximum length {T}: no room for padding")
        return
    case = padding_case(ctx)
    with inp.eval_mode(lm.module):
        for mode in ("grad", "no_grad"):
            yield from _padding_mode(ctx, case, mode, name)
        if lm.kind == "decoder":
            yield from _padding_left(ctx, case)


def measure_convention(ctx: CheckContext) -> list[str]:
    """Find the mask encoding under which padding leaves real positions unchanged, on the very
    inputs and no_grad forwards the check judges (cached: no extra forward when the first holds)."""
    if shared.probe_length(ctx) < 2:
        return []
    case = padding_case(ctx)

    def outputs(ctx: CheckContext) -> _Outputs:
        alone, out, out2 = padding_outputs(ctx, case, "no_grad")
        return alone, case["real"](out), case["real"](out2)

    tol = ctx.options.get("padding.warn_rel", 1e-3) * dtype_scale(ctx.model)
    with inp.eval_mode(ctx.model.module):
        return measure_mask(ctx, outputs, tol)


def _no_mask_text() -> str:
    names = ", ".join(n for n in inp.MASK_ARGUMENTS if n != "attention_mask")
    return (
        "the model's forward takes no attention_mask (nor any of " + names + "), so padded batches cannot be "
        "masked: padding tokens are attended to like real ones. Add an attention_mask=None argument and hide "
        "padded keys"
    )


def padding_case(ctx: CheckContext) -> dict[str, Any]:
    """The inputs: row 1 keeps L real tokens then padding; the same tokens alone; other pad content."""
    if ("padding_case",) not in ctx.cache:
        ctx.cache[("padding_case",)] = _padding_case(ctx, shared.probe_length(ctx))
    case: dict[str, Any] = ctx.cache[("padding_case",)]
    return case


def _padding_case(ctx: CheckContext, T: int) -> dict[str, Any]:
    import torch

    lm, dev = ctx.model, ctx.device
    gen = ctx.generator(4)
    ids = inp.token_ids(lm, 2, T, gen, dev)
    L = max(1, T - max(1, T // 3))
    padded, mask = inp.right_pad(lm, ids, [T, L])
    repadded, _ = inp.right_pad(lm, ids, [T, L], fill=inp.different_tokens(lm, ids, gen))
    case: dict[str, Any] = dict(ids=ids, T=T, L=L, padded=padded, repadded=repadded, mask=mask)
    case["ones"] = torch.ones(1, L, dtype=mask.dtype, device=dev)
    if lm.kind == "seq2seq":  # pad the encoder side; every decoder position must stay the same
        dec = inp.token_ids(lm, 2, inp.clamp_len(lm, 8), gen, dev)
        case.update(real=lambda out: out[1], alone_args=dict(decoder_ids=dec[1:2]), batch_args=dict(decoder_ids=dec))
    else:
        case.update(real=lambda out: out[1, :L], alone_args={}, batch_args={})
    return case


def _padding_mode(ctx: CheckContext, case: dict[str, Any], mode: str, name: str) -> Iterator[Row]:
    import torch

    lm, c = ctx.model, case
    tol = ctx.threshold("pass_rel") * dtype_scale(lm)
    metric = f"real-position change ({mode})"
    L, T, real = c["L"], c["T"], c["real"]
    try:
        alone, out, out2 = padding_outputs(ctx, c, mode)
    except Exception as err:
        detail = f"a right-padded batch (mask passed as {inp.mask_convention(lm)}) raised under {mode}: "
        yield ctx.row(FAIL, metric, None, f"<= {tol:.0e}", detail + describe_error(err))
        return
    if not bool(torch.isfinite(alone).all()):
        why = (
            f"the outputs hold NaN/Inf for {L} tokens without any padding under {mode}, so padding cannot be "
            "judged (see stability)"
        )
        yield ctx.row(FAIL, metric, float("nan"), "finite", why)
        return
    if not (torch.isfinite(real(out)).all() and torch.isfinite(out[0]).all()):
        why = (
            f"NaN/Inf in real positions of a right-padded batch under {mode}: fully masked rows (a query whose "
            "keys are all masked gives softmax over nothing = NaN, which then spreads through the next layer). "
            "Use a large finite negative instead of -inf, or unmask such rows"
        )
        yield ctx.row(FAIL, metric, float("nan"), "finite", why)
        return
    d_pad, d_fill = max_abs_diff(real(out), alone), max_abs_diff(real(out2), real(out))
    rel = max(d_pad, d_fill) / output_scale(alone)
    detail = (
        f"mask passed as {inp.mask_convention(lm)}; row with {L} real tokens then {T - L} pads vs the same "
        f"tokens alone: {fmt(d_pad)}; other tokens under the padding: {fmt(d_fill)} (max relative {fmt(rel)})"
    )
    yield _padding_verdict(ctx, metric, rel, tol, detail, name)


def padding_outputs(ctx: CheckContext, c: dict[str, Any], mode: str) -> _Outputs:
    """(row alone, padded batch, batch with other pad content) under the run's mask convention,
    computed once per (convention, mode); raises what the model raised."""
    conv = ctx.model.conventions
    key = ("padding", conv.mask.value if conv is not None and conv.mask is not None else None, mode)
    if key not in ctx.cache:
        try:
            L = c["L"]
            alone = inp.forward(ctx.model, c["ids"][1:2, :L], c["ones"], mode=mode, seed=ctx.seed, **c["alone_args"])
            ctx.cache[key] = (alone[0], *_padded_outputs(ctx, c, mode))
        except Exception as err:  # the model's answer under this convention
            ctx.cache[key] = err
    value: _Outputs | Exception = ctx.cache[key]
    if isinstance(value, Exception):
        raise value
    return value


def _padded_outputs(ctx: CheckContext, c: dict[str, Any], mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs of the padded batch and of the same batch with other tokens under the padding: one
    stacked forward for a deterministic model (rows compared within one call), two seeded forwards
    for a model that is random in eval (so its randomness is not taken for a padding leak)."""
    import torch

    lm = ctx.model
    if shared.repeat_difference(ctx) != 0 or not shared.rows_independent(ctx):
        out = inp.forward(lm, c["padded"], c["mask"], mode=mode, seed=ctx.seed, **c["batch_args"])
        return out, inp.forward(lm, c["repadded"], c["mask"], mode=mode, seed=ctx.seed, **c["batch_args"])
    args = {k: torch.cat([v, v]) for k, v in c["batch_args"].items()}
    both = torch.cat([c["padded"], c["repadded"]])
    out = inp.forward(lm, both, torch.cat([c["mask"], c["mask"]]), mode=mode, seed=ctx.seed, **args)
    return out[: c["padded"].shape[0]], out[c["padded"].shape[0] :]


def _padding_verdict(ctx: CheckContext, metric: str, rel: float, tol: float, detail: str, name: str) -> Row:
    # A first cut said atol 1e-5; judged relative to the output scale (see numeric.output_scale),
    # with a WARN band up to warn_rel for kernels that change with the padded length.
    if rel <= tol:
        return ctx.row(PASS, metric, rel, f"<= {tol:.0e}", detail)
    if rel <= ctx.threshold("warn_rel") * dtype_scale(ctx.model):
        return ctx.row(WARN, metric, rel, f"<= {tol:.0e}", detail + ": more than rounding")
    fix = (
        f": padding changes the real positions, so the {name} is not honoured. Turn it into a key padding mask "
        "(e.g. src_key_padding_mask = attention_mask == 0) in every attention layer"
    )
    tries = ctx.model.conventions.mask_tries if ctx.model.conventions is not None else []
    if tries:
        fix += ". No other mask convention keeps them either (" + "; ".join(tries) + ")"
    return ctx.row(FAIL, metric, rel, f"<= {tol:.0e}", detail + fix)


def _padding_left(ctx: CheckContext, case: dict[str, Any]) -> Iterator[Row]:
    """Batched generation pads on the left. Values may legitimately shift there (absolute
    positions move), so only finiteness is judged: causal mask + left padding makes the pad
    queries' rows fully masked, and under no_grad fused paths turn that into NaN that spreads to
    real positions (docs/checks_tier1.md, "Known traps"). A warning, not a failure: right padding, the
    criterion above, is what training uses."""
    import torch

    lm, dev, c = ctx.model, ctx.device, case
    T, L = c["T"], c["L"]
    left = torch.cat([torch.full((1, T - L), int(lm.pad_token_id), device=dev), c["ids"][1:2, :L]], dim=1)
    left_mask = torch.cat([torch.zeros(1, T - L, dtype=c["mask"].dtype, device=dev), c["ones"]], dim=1)
    metric = "left padding, real positions finite (no_grad)"
    try:
        out = inp.forward(lm, left, left_mask, mode="no_grad", seed=ctx.seed)
    except Exception as err:
        why = f"a left-padded input raised {describe_error(err)}: batched generation pads on the left"
        yield ctx.row(WARN, metric, None, "finite", why)
        return
    if bool(torch.isfinite(out[0, T - L :]).all()):
        yield ctx.row(PASS, metric, "finite", "finite", f"{T - L} pads then {L} real tokens: real positions finite")
    else:
        why = (
            f"{T - L} pads then {L} real tokens gives NaN/Inf in real positions: the pads' attention rows are fully "
            "masked (causal + padding). Batched generation pads on the left; let every query see at least itself, "
            "or use a large finite negative instead of -inf"
        )
        yield ctx.row(WARN, metric, "NaN/Inf", "finite", why)


register_mask_probe(measure_convention)
