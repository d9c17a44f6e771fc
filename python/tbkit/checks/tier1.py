"""Tier 1: the critical checks. torch, numpy and matplotlib only; nothing here ever installs.

Each check is a generator of rows (see tiers/base.py). Rules every check keeps:
- the model runs in eval mode (``inputs.eval_mode`` restores each submodule's own flag), except
  ``gradient_flow``, which trains one step on a deep copy: the caller's weights are never touched;
- inputs come from ``tiers.inputs`` (real vocabulary and length, seeded by the run seed);
- tolerances are for fp32 and widen by the dtype's machine epsilon for half-precision models.
The criteria follow design/CHECKS.md; where a number differs, the reason is written beside it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from tbkit.checks import inputs as inp
from tbkit.checks.base import CheckContext, Status, register

if TYPE_CHECKING:
    import torch

PASS, WARN, FAIL, SKIP = Status.PASS, Status.WARN, Status.FAIL, Status.SKIP


# ------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------
def _dtype_scale(model) -> float:
    """How much looser than fp32 a tolerance must be for this model's parameter dtype."""
    import torch

    dtypes = {p.dtype for p in model.module.parameters() if p.is_floating_point()}
    eps = max((torch.finfo(d).eps for d in dtypes), default=torch.finfo(torch.float32).eps)
    return max(1.0, eps / torch.finfo(torch.float32).eps)


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| as a float; NaN if either side holds a non-finite value (a finding, not noise)."""
    import torch

    a, b = a.float(), b.float()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("nan")
    if a.numel() == 0:
        return 0.0
    return float((a - b).abs().max())


def _scale(t: torch.Tensor) -> float:
    """max(1, max |t|): differences are judged relative to the size of the outputs, because
    fp32 rounding in a GEMM grows with the magnitude of what is summed (logits of ±30 differ by
    ~1e-5 between a batched and a single-row matmul on healthy models)."""
    import torch

    t = t.float()
    finite = t[torch.isfinite(t)]
    return max(1.0, float(finite.abs().max())) if finite.numel() else 1.0


def _exc(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".strip()


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    return f"{x:.3g}"


def _pair(model, ids, device, generator):
    """(encoder ids, decoder ids) for a forward: seq2seq gets a separate encoder input of the
    same shape; other kinds use ``ids`` alone (decoder ids None)."""
    if model.kind == "seq2seq":
        return inp.token_ids(model, ids.shape[0], ids.shape[1], generator, device), ids
    return ids, None


def _figure():
    from matplotlib.figure import Figure

    return Figure(figsize=(6.4, 3.6))


# ------------------------------------------------------------------------------------------
# summary
# ------------------------------------------------------------------------------------------
@register("summary", tier=1, summary="parameters (total/trainable), size in MB, per-module table")
def summary(ctx: CheckContext):
    lm = ctx.model
    module = lm.module
    params = list(module.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    buffer_bytes = sum(b.numel() * b.element_size() for b in module.buffers())
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in params})

    yield ctx.row(
        PASS,
        "parameters",
        total,
        detail=(f"{trainable:,} trainable, {total - trainable:,} frozen; dtype {', '.join(dtypes) or 'none'}"),
    )
    yield ctx.row(
        PASS,
        "size_mb",
        round((param_bytes + buffer_bytes) / 2**20, 3),
        detail=f"parameters {param_bytes / 2**20:.3f} MB + buffers {buffer_bytes / 2**20:.3f} MB",
    )

    lines = []
    for name, child in module.named_children():
        n = sum(p.numel() for p in child.parameters())
        lines.append(f"{name} ({type(child).__name__}): {n:,} params")
    own = sum(p.numel() for p in module.parameters(recurse=False))
    if own:
        lines.append(f"(directly on {type(module).__name__}): {own:,} params")
    yield ctx.row(PASS, "modules", len(lines), detail="\n".join(lines) or "no submodules")

    facts = (
        f"{type(module).__name__}: kind {lm.kind} ({lm.kind_reason}), vocab {lm.vocab_size} "
        f"(rows of the input embedding), max length "
        f"{lm.max_len if lm.max_len else 'not found (checks use ' + str(inp.DEFAULT_MAX_LEN) + ')'}"
    )
    if lm.notes:
        facts += "; notes: " + "; ".join(str(n) for n in lm.notes)
    yield ctx.row(PASS, "model", lm.kind, detail=facts)


# ------------------------------------------------------------------------------------------
# shape
# ------------------------------------------------------------------------------------------
@register("shape", tier=1, summary="batch {1,2,7} x length {1,2,odd,max_len}: output (B,T,V|H); max_len+1")
def shape(ctx: CheckContext):
    import torch

    lm, dev = ctx.model, ctx.device
    longest = inp.usable_max_len(lm)
    odd = min(longest, max(3, (longest // 2) | 1))
    lengths = sorted({n for n in (1, 2, odd, longest) if n <= longest})
    gen = ctx.generator(1)
    failures, last_dims, tried = [], set(), 0
    with inp.eval_mode(lm.module):
        for B in (1, 2, 7):
            for T in lengths:
                tried += 1
                enc, dec = _pair(lm, inp.token_ids(lm, B, T, gen, dev), dev, gen)
                try:
                    out = inp.forward(lm, enc, decoder_ids=dec)
                except Exception as err:  # the model's error is the finding
                    failures.append(f"(B={B}, T={T}) raised {_exc(err)}")
                    continue
                if out.dim() != 3 or tuple(out.shape[:2]) != (B, T):
                    failures.append(f"(B={B}, T={T}) gave shape {tuple(out.shape)}, expected ({B}, {T}, V or H)")
                    continue
                last_dims.add(int(out.shape[-1]))
    note = inp.length_note(lm)
    if failures:
        yield ctx.row(
            FAIL,
            "shapes correct",
            f"{tried - len(failures)}/{tried}",
            "all",
            "; ".join(failures) + (f". {note}" if note else ""),
        )
    elif len(last_dims) > 1:
        yield ctx.row(
            FAIL,
            "shapes correct",
            f"0/{tried}",
            "all",
            f"the last output dimension changes with the input: {sorted(last_dims)}",
        )
    else:
        (width,) = last_dims
        what = "V (logits over the vocabulary)" if width == lm.vocab_size else f"H = {width} (hidden states)"
        detail = f"batch 1, 2, 7 x length {', '.join(map(str, lengths))}: every output is (B, T, {what})"
        if lm.kind == "decoder" and width != lm.vocab_size:
            detail += "; a decoder usually ends in an LM head of size V: this one does not"
        yield ctx.row(PASS, "shapes correct", f"{tried}/{tried}", "all", detail + (f". {note}" if note else ""))

    # One token past the limit must either work or fail with an error: what it must not do is
    # return garbage silently. Not tried off-CPU: an out-of-range index on CUDA is a device-side
    # assert that leaves CUDA unusable for the rest of the process (the notebook would need a restart).
    if not lm.max_len:
        yield ctx.row(SKIP, "max_len + 1", None, "", "no maximum length found on the model: nothing to exceed")
        return
    if dev.type != "cpu":
        yield ctx.row(
            SKIP,
            "max_len + 1",
            None,
            "",
            (
                f"not tried on {dev.type}: an out-of-range position there is a device-side assert that breaks "
                "CUDA for the whole process; run with device='cpu' to probe it"
            ),
        )
        return
    T = int(lm.max_len) + 1
    enc, dec = _pair(lm, inp.token_ids(lm, 1, T, gen, dev), dev, gen)
    with inp.eval_mode(lm.module):
        try:
            out = inp.forward(lm, enc, decoder_ids=dec)
        except Exception as err:
            yield ctx.row(
                PASS, "max_len + 1", "fails clearly", "fails clearly or works", f"length {T} raises {_exc(err)}"
            )
            return
    if out.dim() == 3 and tuple(out.shape[:2]) == (1, T) and bool(torch.isfinite(out).all()):
        yield ctx.row(
            PASS,
            "max_len + 1",
            "works",
            "fails clearly or works",
            f"length {T} gives finite output of shape {tuple(out.shape)}: max_len {lm.max_len} is not a hard limit",
        )
    else:
        yield ctx.row(
            WARN,
            "max_len + 1",
            "silent garbage",
            "fails clearly or works",
            f"length {T} returned shape {tuple(out.shape)} (finite: {bool(torch.isfinite(out).all())}) "
            "without an error: inputs that are too long should raise a clear error",
        )


# ------------------------------------------------------------------------------------------
# batch_equivalence
# ------------------------------------------------------------------------------------------
@register("batch_equivalence", tier=1, summary="row i of a batched forward equals the same row run alone")
def batch_equivalence(ctx: CheckContext):
    import torch

    lm, dev = ctx.model, ctx.device
    B, T = 4, inp.clamp_len(lm, 16)
    gen = ctx.generator(2)
    enc, dec = _pair(lm, inp.token_ids(lm, B, T, gen, dev), dev, gen)
    with inp.eval_mode(lm.module):
        full = inp.forward(lm, enc, decoder_ids=dec)
        alone = torch.cat(
            [inp.forward(lm, enc[i : i + 1], decoder_ids=None if dec is None else dec[i : i + 1]) for i in range(B)]
        )
    diff = _max_abs_diff(full, alone)
    rel = diff / _scale(full)
    k = _dtype_scale(lm)
    # CHECKS.md: fp32 max-abs <= 1e-5 PASS, <= 1e-3 WARN. Judged relative to max(1, |output|)
    # (see _scale) so large healthy logits are not flagged for ordinary rounding.
    detail = f"batch {B} x length {T}: max |batched - alone| = {_fmt(diff)}, {_fmt(rel)} relative to max(1, |output|)"
    if math.isnan(diff):
        yield ctx.row(FAIL, "max relative difference", rel, "finite", detail + ": the outputs hold NaN or Inf")
    elif rel <= 1e-5 * k:
        yield ctx.row(PASS, "max relative difference", rel, f"<= {1e-5 * k:.0e}", detail)
    elif rel <= 1e-3 * k:
        yield ctx.row(
            WARN,
            "max relative difference",
            rel,
            f"<= {1e-5 * k:.0e}",
            detail + ": more than rounding; check for batch-dependent kernels or statistics",
        )
    else:
        yield ctx.row(
            FAIL,
            "max relative difference",
            rel,
            f"<= {1e-3 * k:.0e}",
            detail + ": rows of a batch influence each other (batch statistics in eval, "
            "a mean over dim 0, or a mask broadcast across the batch)",
        )


# ------------------------------------------------------------------------------------------
# causal
# ------------------------------------------------------------------------------------------
@register(
    "causal",
    tier=1,
    summary="decoders: changing token s must not move outputs at t < s (grad, no_grad, inference_mode)",
)
def causal(ctx: CheckContext):
    import torch

    lm, dev = ctx.model, ctx.device
    if lm.kind == "encoder":
        yield ctx.row(
            SKIP,
            "causality",
            None,
            "",
            (
                "bidirectional (encoder): not applicable, every position may see every other one. "
                "If this model is meant to generate text, load it with kind='decoder'"
            ),
        )
        return
    T = inp.clamp_len(lm, 16)
    if T < 2:
        yield ctx.row(SKIP, "causality", None, "", f"maximum length {T}: no earlier position to protect")
        return
    gen = ctx.generator(3)
    ids = inp.token_ids(lm, 2, T, gen, dev)
    enc, _ = _pair(lm, ids, dev, gen)  # seq2seq: the encoder input stays fixed, the decoder side is perturbed
    alt = inp.different_tokens(lm, ids, gen)
    positions = sorted({1, T // 2, T - 1})
    tol = 1e-6 * _dtype_scale(lm)
    side = "decoder input" if lm.kind == "seq2seq" else "input"

    def run(x, mode):
        if lm.kind == "seq2seq":
            return inp.forward(lm, enc, decoder_ids=x, mode=mode, seed=ctx.seed)
        return inp.forward(lm, x, mode=mode, seed=ctx.seed)

    with inp.eval_mode(lm.module):
        for mode in inp.MODES:
            metric = f"max change at t < s ({mode})"
            try:
                base = run(ids, mode)
                if not bool(torch.isfinite(base).all()):
                    yield ctx.row(
                        FAIL,
                        metric,
                        float("nan"),
                        f"<= {tol:.0e}",
                        (
                            f"the outputs hold NaN/Inf at length {T} under {mode}, so causality cannot be judged "
                            "(see stability)"
                        ),
                    )
                    continue
                worst, leak, moved_at_s = 0.0, None, False
                for s in positions:
                    x = ids.clone()
                    x[:, s] = alt[:, s]
                    out = run(x, mode)
                    d = _max_abs_diff(out[:, :s], base[:, :s])
                    if _max_abs_diff(out[:, s:], base[:, s:]) > 0:
                        moved_at_s = True
                    if math.isnan(d) or d > tol:
                        per_t = (out[:, :s].float() - base[:, :s].float()).abs().amax(dim=(0, 2))
                        first = int((per_t.isnan() | (per_t > tol)).nonzero()[0])
                        if leak is None:
                            leak = (first, s, d)
                    worst = d if math.isnan(d) else (worst if math.isnan(worst) else max(worst, d))
            except Exception as err:
                hint = (
                    ". is_causal was used without a mask: torch raises in grad mode and, under no_grad, its "
                    "fused path silently drops causality. Pass an explicit causal mask"
                    if "is_causal" in str(err)
                    else ". A decoder must run in every grad mode"
                )
                yield ctx.row(
                    FAIL, metric, None, f"<= {tol:.0e}", f"the forward raised under {mode}: {_exc(err)}{hint}"
                )
                continue
            if leak is not None:
                t, s, d = leak
                yield ctx.row(
                    FAIL,
                    metric,
                    worst,
                    f"<= {tol:.0e}",
                    (
                        f"changing {side} token {s} moved the output at position {t} (earlier outputs by up to {_fmt(d)}) under {mode}: "
                        "the model sees the future. Mask keys j > i (e.g. nn.Transformer.generate_square_subsequent_mask) "
                        "and pass the mask explicitly; is_causal alone is ignored by fused no_grad paths"
                    ),
                )
            elif not moved_at_s:
                yield ctx.row(
                    WARN,
                    metric,
                    worst,
                    f"<= {tol:.0e}",
                    (
                        f"no output moved at all when {side} tokens {positions} changed: the output does not "
                        "depend on those tokens, so causality could not be tested"
                    ),
                )
            else:
                yield ctx.row(
                    PASS,
                    metric,
                    worst,
                    f"<= {tol:.0e}",
                    f"{side} positions {positions} perturbed (length {T}): earlier outputs unchanged",
                )


# ------------------------------------------------------------------------------------------
# padding
# ------------------------------------------------------------------------------------------
@register("padding", tier=1, summary="right padding and pad content leave real positions unchanged (grad, no_grad)")
def padding(ctx: CheckContext):
    import torch

    lm, dev = ctx.model, ctx.device
    if not lm.accepts_attention_mask:
        yield ctx.row(
            WARN,
            "attention_mask",
            "not accepted",
            "accepted",
            (
                "the model's forward takes no attention_mask, so padded batches cannot be masked: padding "
                "tokens are attended to like real ones. Add an attention_mask=None argument and hide padded keys"
            ),
        )
        return
    T = inp.clamp_len(lm, 16)
    if T < 2:
        yield ctx.row(SKIP, "real positions", None, "", f"maximum length {T}: no room for padding")
        return
    gen = ctx.generator(4)
    ids = inp.token_ids(lm, 2, T, gen, dev)
    L = max(1, T - max(1, T // 3))  # row 1 keeps L real tokens, the rest is padding
    lengths = [T, L]
    padded, mask = inp.right_pad(lm, ids, lengths)
    repadded, _ = inp.right_pad(lm, ids, lengths, fill=inp.different_tokens(lm, ids, gen))
    ones = torch.ones(1, L, dtype=mask.dtype, device=dev)
    tol = 1e-5 * _dtype_scale(lm)
    if lm.kind == "seq2seq":  # pad the encoder side; every decoder position must stay the same
        dec = inp.token_ids(lm, 2, inp.clamp_len(lm, 8), gen, dev)
        real = lambda out: out[1]  # noqa: E731
        alone_args = dict(decoder_ids=dec[1:2])
        batch_args = dict(decoder_ids=dec)
    else:
        real = lambda out: out[1, :L]  # noqa: E731
        alone_args, batch_args = {}, {}

    with inp.eval_mode(lm.module):
        for mode in ("grad", "no_grad"):
            metric = f"real-position change ({mode})"
            try:
                alone = inp.forward(lm, ids[1:2, :L], ones, mode=mode, seed=ctx.seed, **alone_args)[0]
                out = inp.forward(lm, padded, mask, mode=mode, seed=ctx.seed, **batch_args)
                out2 = inp.forward(lm, repadded, mask, mode=mode, seed=ctx.seed, **batch_args)
            except Exception as err:
                yield ctx.row(
                    FAIL, metric, None, f"<= {tol:.0e}", f"a right-padded batch raised under {mode}: {_exc(err)}"
                )
                continue
            if not bool(torch.isfinite(alone).all()):
                yield ctx.row(
                    FAIL,
                    metric,
                    float("nan"),
                    "finite",
                    (
                        f"the outputs hold NaN/Inf for {L} tokens without any padding under {mode}, so padding "
                        "cannot be judged (see stability)"
                    ),
                )
                continue
            if not (torch.isfinite(real(out)).all() and torch.isfinite(out[0]).all()):
                yield ctx.row(
                    FAIL,
                    metric,
                    float("nan"),
                    "finite",
                    (
                        f"NaN/Inf in real positions of a right-padded batch under {mode}: fully masked rows "
                        "(a query whose keys are all masked gives softmax over nothing = NaN, which then spreads "
                        "through the next layer). Use a large finite negative instead of -inf, or unmask such rows"
                    ),
                )
                continue
            d_pad = _max_abs_diff(real(out), alone)
            d_fill = _max_abs_diff(real(out2), real(out))
            rel = max(d_pad, d_fill) / _scale(alone)
            detail = (
                f"row with {L} real tokens then {T - L} pads vs the same tokens alone: {_fmt(d_pad)}; "
                f"other tokens under the padding: {_fmt(d_fill)} (max relative {_fmt(rel)})"
            )
            # CHECKS.md says atol 1e-5; judged relative to the output scale (see _scale), with a
            # WARN band up to 1e-3 for kernels that change with the padded length.
            if rel <= tol:
                yield ctx.row(PASS, metric, rel, f"<= {tol:.0e}", detail)
            elif rel <= 1e-3 * _dtype_scale(lm):
                yield ctx.row(WARN, metric, rel, f"<= {tol:.0e}", detail + ": more than rounding")
            else:
                yield ctx.row(
                    FAIL,
                    metric,
                    rel,
                    f"<= {tol:.0e}",
                    detail
                    + (
                        ": padding changes the real positions, so the attention_mask is not honoured. Turn it into "
                        "a key padding mask (e.g. src_key_padding_mask = attention_mask == 0) in every attention layer"
                    ),
                )

        if lm.kind == "decoder":
            # Batched generation pads on the left. Values may legitimately shift there (absolute
            # positions move), so only finiteness is judged: causal mask + left padding makes the
            # pad queries' rows fully masked, and under no_grad fused paths turn that into NaN
            # that spreads to real positions (CHECKS.md "Known traps"). A warning, not a failure:
            # right padding, the criterion above, is what training uses.
            left = torch.cat([torch.full((1, T - L), int(lm.pad_token_id), device=dev), ids[1:2, :L]], dim=1)
            left_mask = torch.cat([torch.zeros(1, T - L, dtype=mask.dtype, device=dev), ones], dim=1)
            metric = "left padding, real positions finite (no_grad)"
            try:
                out = inp.forward(lm, left, left_mask, mode="no_grad", seed=ctx.seed)
            except Exception as err:
                yield ctx.row(
                    WARN,
                    metric,
                    None,
                    "finite",
                    f"a left-padded input raised {_exc(err)}: batched generation pads on the left",
                )
                return
            if bool(torch.isfinite(out[0, T - L :]).all()):
                yield ctx.row(
                    PASS, metric, "finite", "finite", f"{T - L} pads then {L} real tokens: real positions finite"
                )
            else:
                yield ctx.row(
                    WARN,
                    metric,
                    "NaN/Inf",
                    "finite",
                    (
                        f"{T - L} pads then {L} real tokens gives NaN/Inf in real positions: the pads' attention rows "
                        "are fully masked (causal + padding). Batched generation pads on the left; let every query see "
                        "at least itself, or use a large finite negative instead of -inf"
                    ),
                )


# ------------------------------------------------------------------------------------------
# stability
# ------------------------------------------------------------------------------------------
@register(
    "stability",
    tier=1,
    summary="random ids, one repeated token, length 1 and max_len, bf16 autocast: finite, |logit| < 1e4",
)
def stability(ctx: CheckContext):
    import torch

    lm, dev = ctx.model, ctx.device
    longest = inp.usable_max_len(lm)
    T = inp.clamp_len(lm, 32)
    gen = ctx.generator(5)
    token = int(inp.token_ids(lm, 1, 1, gen)[0, 0])
    cases = [
        ("random ids", inp.token_ids(lm, 2, T, gen, dev), False),
        ("one repeated token", torch.full((1, T), token, dtype=torch.long, device=dev), False),
        ("length 1", inp.token_ids(lm, 2, 1, gen, dev), False),
        (f"length {longest} (max)", inp.token_ids(lm, 1, longest, gen, dev), False),
        ("bf16 autocast", inp.token_ids(lm, 2, T, gen, dev), True),
    ]
    histogram = None
    fp32_finite = True  # every case before the bf16 one was finite
    with inp.eval_mode(lm.module):
        for name, ids, bf16 in cases:
            metric = f"max |output|: {name}"
            enc, dec = _pair(lm, ids, dev, gen)
            soft = WARN if bf16 else FAIL  # CHECKS.md: non-finite under bf16 is a warning only
            if bf16:
                try:
                    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
                except Exception as err:  # the device has no bf16 autocast: nothing to judge
                    yield ctx.row(SKIP, metric, None, "", f"bf16 autocast is not available on {dev.type}: {_exc(err)}")
                    continue
            try:
                if bf16:
                    with autocast:
                        out = inp.forward(lm, enc, decoder_ids=dec)
                else:
                    out = inp.forward(lm, enc, decoder_ids=dec)
            except Exception as err:
                yield ctx.row(soft, metric, None, "< 1e4", f"the forward raised: {_exc(err)}")
                fp32_finite = fp32_finite and bf16
                continue
            out = out.float()
            finite = torch.isfinite(out)
            if histogram is None and not bf16:
                histogram = out[finite].flatten().cpu()
            if not bool(finite.all()):
                bad = int((~finite).sum())
                where = (~finite).any(dim=-1).nonzero()
                first = tuple(int(v) for v in where[0]) if len(where) else ()
                yield ctx.row(
                    soft,
                    metric,
                    float("nan"),
                    "finite",
                    (
                        f"{bad} of {out.numel()} output values are NaN/Inf (first at batch, position {first}) "
                        f"for {name} (shape {tuple(ids.shape)})"
                        + (
                            (
                                ": bf16 overflow; the same input in the model's own precision is finite"
                                if fp32_finite
                                else ": the model's own precision fails too (rows above)"
                            )
                            if bf16
                            else ""
                        )
                    ),
                )
                fp32_finite = fp32_finite and bf16
                continue
            peak = float(out.abs().max())
            if peak >= 1e4:
                yield ctx.row(
                    WARN,
                    metric,
                    peak,
                    "< 1e4",
                    f"outputs reach {peak:.3g}: near fp16/bf16 overflow and "
                    "a saturated softmax; check the output scaling and the init",
                )
            else:
                yield ctx.row(PASS, metric, peak, "< 1e4", f"finite for {name} (shape {tuple(ids.shape)})")
    if histogram is not None and histogram.numel():
        fig = _figure()
        ax = fig.add_subplot()
        sample = histogram[torch.randperm(histogram.numel(), generator=gen)[:200_000]].numpy()
        ax.hist(sample, bins=80, color="#4c72b0")
        ax.set_yscale("log")
        ax.set_xlabel("output value (logit or hidden state)")
        ax.set_ylabel("count")
        ax.set_title("Output distribution on random ids")
        ctx.save_figure(fig, "output_distribution")


# ------------------------------------------------------------------------------------------
# determinism
# ------------------------------------------------------------------------------------------
@register("determinism", tier=1, summary="two eval forwards on the same input are identical")
def determinism(ctx: CheckContext):
    lm, dev = ctx.model, ctx.device
    gen = ctx.generator(6)
    enc, dec = _pair(lm, inp.token_ids(lm, 2, inp.clamp_len(lm, 16), gen, dev), dev, gen)
    with inp.eval_mode(lm.module):
        a = inp.forward(lm, enc, decoder_ids=dec)
        b = inp.forward(lm, enc, decoder_ids=dec)
    d = _max_abs_diff(a, b)
    tol = 1e-6 * _dtype_scale(lm)
    if math.isnan(d):
        yield ctx.row(FAIL, "max |run1 - run2|", d, f"<= {tol:.0e}", "the outputs hold NaN/Inf")
    elif d <= tol:
        yield ctx.row(PASS, "max |run1 - run2|", d, f"<= {tol:.0e}", "two eval forwards agree")
    else:
        yield ctx.row(
            FAIL,
            "max |run1 - run2|",
            d,
            f"<= {tol:.0e}",
            (
                f"two eval forwards on the same input differ by {_fmt(d)}: something random stays on in eval "
                "(F.dropout(..., training=True), sampling in forward, or uninitialised memory). Use nn.Dropout "
                "modules or pass training=self.training"
            ),
        )


# ------------------------------------------------------------------------------------------
# init
# ------------------------------------------------------------------------------------------
def _is_norm(module) -> bool:
    import torch.nn as nn

    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)) or (
        "norm" in type(module).__name__.lower() and hasattr(module, "weight")
    )


@register("init", tier=1, summary="loss at init vs ln V, norm layers, identical tensors across layers, weight scale")
def init(ctx: CheckContext):
    import torch
    import torch.nn as nn

    lm, dev = ctx.model, ctx.device
    module = lm.module
    named = list(module.named_parameters())

    bad = [n for n, p in named if not bool(torch.isfinite(p).all())]
    if bad:
        yield ctx.row(FAIL, "non-finite parameters", len(bad), "0", "NaN/Inf in: " + ", ".join(bad[:20]))

    # 1. loss at init against the uniform prediction, ln V
    gen = ctx.generator(7)
    ids = inp.token_ids(lm, 4, inp.clamp_len(lm, 32), gen, dev)
    enc, dec = _pair(lm, ids, dev, gen)
    with inp.eval_mode(module):
        out = inp.forward(lm, enc, decoder_ids=dec)
    ln_v = math.log(lm.vocab_size)
    if not inp.output_is_logits(lm, out):
        yield ctx.row(
            SKIP,
            "loss at init",
            None,
            "",
            (
                f"the output is hidden states of width {out.shape[-1]}, not logits over the {lm.vocab_size}-token "
                "vocabulary: there is no token loss to compare with ln V"
            ),
        )
    else:
        loss, what = inp.lm_loss(lm, ids, out, gen)
        L0 = float(loss)
        detail = (
            f"{what} on random tokens: L0 = {_fmt(L0)}, ln V = {ln_v:.3f} (a fresh model should predict "
            "close to uniform; for a trained model this comparison does not apply)"
        )
        if not math.isfinite(L0):
            yield ctx.row(
                FAIL,
                "loss at init",
                L0,
                f"<= 2 ln V = {2 * ln_v:.3f}",
                detail + ": the loss is not finite because the outputs hold NaN/Inf (see stability)",
            )
        elif 2 * ln_v < L0:
            yield ctx.row(
                FAIL,
                "loss at init",
                L0,
                f"<= 2 ln V = {2 * ln_v:.3f}",
                detail
                + (
                    ": the initial predictions are confidently wrong, usually weights or logits scaled far too large "
                    "(e.g. std >> 1/sqrt(fan_in)); use a small init such as normal(0, 0.02) for the LM head"
                ),
            )
        elif abs(L0 - ln_v) > 0.1 * ln_v:
            yield ctx.row(WARN, "loss at init", L0, f"|L0 - ln V| <= {0.1 * ln_v:.3f}", detail)
        else:
            yield ctx.row(PASS, "loss at init", L0, f"|L0 - ln V| <= {0.1 * ln_v:.3f}", detail)

    # 2. norm layers: weight 1 / bias 0 is the normal fresh state, never flagged
    norms = [
        (n, m)
        for n, m in module.named_modules()
        if _is_norm(m) and isinstance(getattr(m, "weight", None), torch.Tensor)
    ]
    at_default, zeroed = 0, []
    for n, m in norms:
        w, b = m.weight, getattr(m, "bias", None)
        if bool((w == 1).all()) and (b is None or bool((b == 0).all())):
            at_default += 1
        elif bool((w == 0).all()):
            zeroed.append(n)
    if zeroed:
        yield ctx.row(
            WARN,
            "norm layers",
            len(norms),
            "weight not all zero",
            "all-zero weight (the layer outputs only its bias): " + ", ".join(zeroed[:20]),
        )
    else:
        yield ctx.row(
            PASS,
            "norm layers",
            len(norms),
            "",
            (
                f"{at_default} of {len(norms)} at weight 1 / bias 0 (the normal fresh state)"
                if norms
                else "no normalisation layers found"
            ),
        )

    # 3. tensors that are exactly identical across layers (constant tensors such as zero biases
    #    and LayerNorm ones are excluded: identical by design)
    stacks = [n for n, m in module.named_modules() if isinstance(m, (nn.TransformerEncoder, nn.TransformerDecoder))]
    groups: dict = {}
    for n, p in named:
        if p.numel() < 2 or p.dim() == 0:
            continue
        flat = p.detach().flatten()
        if bool((flat == flat[0]).all()):
            continue
        key = (tuple(p.shape), p.dtype, float(flat[:64].float().sum()), float(flat.float().abs().sum()))
        groups.setdefault(key, []).append((n, p))
    identical = []
    for members in groups.values():
        if len(members) > 1:
            ref_name, ref = members[0]
            same = [n for n, p in members[1:] if torch.equal(p, ref)]
            if same:
                identical.append([ref_name, *same])
    if not identical:
        yield ctx.row(PASS, "identical tensors across layers", 0, "0", "no two weight tensors are equal")
    else:
        inside = all(any(n.startswith(s + ".") for s in stacks) for g in identical for n in g)
        listing = "; ".join(" = ".join(g[:3]) + (" …" if len(g) > 3 else "") for g in identical[:6])
        if inside:
            yield ctx.row(
                PASS,
                "identical tensors across layers",
                len(identical),
                "",
                (
                    f"{len(identical)} groups, all inside torch nn.TransformerEncoder/Decoder stacks, which deep-copy "
                    f"their layer so every layer starts identical (torch's default; training breaks the symmetry): {listing}"
                ),
            )
        else:
            yield ctx.row(
                WARN,
                "identical tensors across layers",
                len(identical),
                "0",
                (
                    f"{len(identical)} groups of exactly equal weights in different layers: {listing}. Layers that start "
                    "identical learn slowly apart; re-initialise each layer (or share on purpose by tying)"
                ),
            )

    # 4. scale of each weight matrix: gain = std * sqrt(fan_in). Default torch init gives ~0.58,
    #    xavier ~0.7-1, normal(0, 0.02) less. CHECKS.md's first cut flagged > 4, but a fresh
    #    transformers T5 has an LM head of std 1 (gain sqrt(d) = 5.7 at d 32) by design: its
    #    forward scales the hidden state by d**-0.5 first, which one matrix cannot show. So only
    #    gains an order of magnitude above the default init (> 10) are flagged here; the loss at
    #    init above judges the combined effect of the whole init.
    gains, zero_mats = [], []
    for mname, m in module.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            if p.dim() != 2 or isinstance(m, nn.Embedding) or "weight" not in pname:
                continue
            fan_in = p.shape[0] if type(m).__name__ == "Conv1D" else p.shape[1]  # HF Conv1D stores (in, out)
            std = float(p.detach().float().std())
            full = f"{mname}.{pname}" if mname else pname
            if std == 0:
                zero_mats.append(full)
            gains.append((std * math.sqrt(fan_in), std, full))
    if gains:
        gains.sort(reverse=True)
        top = ", ".join(f"{n} std {s:.3g} (gain {g:.2f})" for g, s, n in gains[:5])
        extra = (
            f"; all-zero matrices (fine if deliberate, e.g. zero-init residual outputs): {', '.join(zero_mats[:10])}"
            if zero_mats
            else ""
        )
        status = WARN if gains[0][0] > 10 else PASS
        yield ctx.row(
            status,
            "max weight gain std*sqrt(fan_in)",
            gains[0][0],
            "<= 10",
            f"largest: {top}{extra}"
            + (": activations grow layer by layer; scale the init down" if status is WARN else ""),
        )


# ------------------------------------------------------------------------------------------
# gradient_flow
# ------------------------------------------------------------------------------------------
def _layer_key(name: str) -> str:
    """Group a parameter into its layer: up to the first numeric path component
    ("blocks.3.attn.in_proj_weight" -> "blocks.3"), else its top-level module ("head.weight" -> "head")."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return parts[0] if len(parts) > 1 else "(root)"


@register(
    "gradient_flow",
    tier=1,
    summary="one backward on an LM loss (on a copy): every parameter reached, finite, and moved by a step",
)
def gradient_flow(ctx: CheckContext):
    import copy
    import dataclasses

    import torch

    lm, dev = ctx.model, ctx.device
    work = copy.deepcopy(lm.module)  # the optimizer step must never touch the caller's weights
    wlm = dataclasses.replace(lm, module=work)
    work.train()  # training is the point here: the same path (dropout on) a real step takes
    ran: set = set()
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: ran.add(n)) for n, m in work.named_modules()]
    gen = ctx.generator(8)
    ids = inp.token_ids(lm, 4, inp.clamp_len(lm, 32), gen, dev)
    enc, dec = _pair(lm, ids, dev, gen)
    try:
        with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
            torch.manual_seed(ctx.seed)
            with torch.enable_grad():
                out = wlm.forward(enc, decoder_input_ids=dec)
                loss, what = inp.lm_loss(lm, ids, out, gen)
                loss.backward()
    except Exception as err:  # the model failing in training mode is the finding
        yield ctx.row(FAIL, "backward", None, "runs", f"forward + backward in training mode raised {_exc(err)}")
        return
    finally:
        for h in hooks:
            h.remove()

    trainable = [(n, p) for n, p in work.named_parameters() if p.requires_grad]
    no_grad = [n for n, p in trainable if p.grad is None]
    owner = lambda n: n.rsplit(".", 1)[0] if "." in n else ""  # noqa: E731
    never_ran = [n for n in no_grad if owner(n) not in ran]
    elsewhere = [n for n in no_grad if owner(n) in ran]
    if never_ran:
        yield ctx.row(
            FAIL,
            "parameters without gradient",
            len(no_grad),
            "0",
            (
                f"disconnected: {', '.join(never_ran[:20])}{' …' if len(never_ran) > 20 else ''} — their modules never run "
                "in forward, so they never train. Use them in forward or delete them"
            ),
        )
    elif elsewhere:
        yield ctx.row(
            WARN,
            "parameters without gradient",
            len(no_grad),
            "0",
            (
                f"used in forward but not connected to the checked output ({what}): {', '.join(elsewhere[:20])}; "
                "they feed another output (e.g. a pooler) and do not train on this loss"
            ),
        )
    else:
        yield ctx.row(
            PASS,
            "parameters without gradient",
            0,
            "0",
            f"all {len(trainable)} trainable tensors got a gradient from the {what}",
        )

    with_grad = [(n, p) for n, p in trainable if p.grad is not None]
    nonfinite = [n for n, p in with_grad if not bool(torch.isfinite(p.grad).all())]
    if nonfinite:
        yield ctx.row(
            FAIL, "non-finite gradients", len(nonfinite), "0", "NaN/Inf gradient in: " + ", ".join(nonfinite[:20])
        )
        return
    zero = [n for n, p in with_grad if not bool(p.grad.any())]
    yield ctx.row(
        WARN if zero else PASS,
        "all-zero gradients",
        len(zero),
        "0",
        (
            "gradient exactly zero for: " + ", ".join(zero[:20]) + " (dead units, a zero multiplier, or a "
            "detached branch)"
        )
        if zero
        else "every reached tensor has a non-zero gradient (embedding rows "
        "of tokens absent from the batch are zero by nature and not counted)",
    )

    norms = {n: float(p.grad.float().norm()) for n, p in with_grad}
    total = math.sqrt(sum(v * v for v in norms.values()))
    yield ctx.row(
        WARN if total > 1e3 else PASS,
        "total gradient norm",
        total,
        "<= 1e3",
        f"loss {float(loss.detach()):.4g} ({what})"
        + ("; exploding gradients: lower the init scale or clip" if total > 1e3 else ""),
    )

    layers: dict = {}
    for n, v in norms.items():
        layers[_layer_key(n)] = layers.get(_layer_key(n), 0.0) + v * v
    layers = {k: math.sqrt(v) for k, v in layers.items()}
    positive = [v for v in layers.values() if v > 0]
    if len(positive) >= 2:
        ratio = min(positive) / max(positive)
        lo = min(layers, key=lambda k: layers[k] if layers[k] > 0 else math.inf)
        hi = max(layers, key=layers.get)
        yield ctx.row(
            WARN if ratio < 1e-4 else PASS,
            "min/max layer gradient norm",
            ratio,
            ">= 1e-4",
            f"smallest {lo} ({_fmt(layers[lo])}), largest {hi} ({_fmt(layers[hi])})"
            + ("; vanishing gradients in the smallest layer" if ratio < 1e-4 else ""),
        )
    if layers:
        fig = _figure()
        fig.set_size_inches(6.4, max(2.5, 0.28 * len(layers) + 1))
        ax = fig.add_subplot()
        names = list(layers)
        ax.barh(range(len(names)), [max(layers[k], 1e-30) for k in names], color="#55a868")
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("gradient norm")
        ax.set_title("Gradient norm per layer (one backward)")
        ctx.save_figure(fig, "gradient_norms")

    before = {n: p.detach().clone() for n, p in with_grad}
    opt = torch.optim.Adam([p for _, p in with_grad], lr=1e-3)
    opt.step()
    unchanged = [n for n, p in with_grad if torch.equal(p.detach(), before[n]) and bool(p.grad.any())]
    moved = sum(1 for n, p in with_grad if not torch.equal(p.detach(), before[n]))
    if moved == 0 and with_grad:
        yield ctx.row(
            FAIL,
            "parameters changed by one Adam step",
            f"0/{len(with_grad)}",
            "all with a gradient",
            "no parameter changed after an optimizer step",
        )
    else:
        yield ctx.row(
            WARN if unchanged else PASS,
            "parameters changed by one Adam step",
            f"{moved}/{len(with_grad)}",
            "all with a non-zero gradient",
            ("unchanged despite a gradient: " + ", ".join(unchanged[:20]))
            if unchanged
            else "Adam lr 1e-3 on a copy: every tensor with a non-zero gradient moved",
        )
    del work, wlm, opt, before


# ------------------------------------------------------------------------------------------
# memory and speed share one (B, T) sweep
# ------------------------------------------------------------------------------------------
def _sweep(lm) -> list:
    longest = inp.usable_max_len(lm)
    short = max(1, longest // 4)
    return sorted({(b, t) for b in (1, 4) for t in (short, longest)})


def _activation_bytes(lm, enc, dec, device) -> int:
    """Activation memory of one forward in grad mode (what training keeps alive).

    CUDA: peak allocated during the forward above what was allocated before it.
    Elsewhere: the bytes of every distinct storage autograd saves for backward
    (``torch.autograd.graph.saved_tensors_hooks``), excluding the parameters and buffers."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.enable_grad():
            out = lm.forward(enc, decoder_input_ids=dec)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del out
        return int(peak)
    resident = {t.untyped_storage().data_ptr() for t in (*lm.module.parameters(), *lm.module.buffers())}
    seen: dict = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in resident:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = lm.forward(enc, decoder_input_ids=dec)
    seen.setdefault(out.untyped_storage().data_ptr(), out.untyped_storage().nbytes())
    del out
    return int(sum(seen.values()))


@register("memory", tier=1, summary="parameter/buffer MB and activation memory over a (B, T) sweep")
def memory(ctx: CheckContext):
    lm, dev = ctx.model, ctx.device
    module = lm.module
    param_mb = sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20
    buffer_mb = sum(b.numel() * b.element_size() for b in module.buffers()) / 2**20
    yield ctx.row(
        PASS,
        "parameters + buffers MB",
        round(param_mb + buffer_mb, 3),
        "",
        f"parameters {param_mb:.3f} MB, buffers {buffer_mb:.3f} MB",
    )
    method = (
        "CUDA peak allocated above the resident model during a grad-mode forward"
        if dev.type == "cuda"
        else "bytes of the tensors autograd saves for backward in a grad-mode forward (saved_tensors_hooks, "
        "distinct storages, parameters excluded) plus the output; a CPU has no allocator peak to read"
    )
    gen = ctx.generator(9)
    points = []
    with inp.eval_mode(module):
        for B, T in _sweep(lm):
            enc, dec = _pair(lm, inp.token_ids(lm, B, T, gen, dev), dev, gen)
            try:
                mb = _activation_bytes(lm, enc, dec, dev) / 2**20
            except Exception as err:  # the model failing in grad mode is the finding
                yield ctx.row(
                    FAIL, "peak activation MB", None, "", f"a grad-mode forward (B={B}, T={T}) raised {_exc(err)}"
                )
                return
            points.append((B, T, mb))
    peak = max(mb for _, _, mb in points)
    sweep = ", ".join(f"B={B} T={T}: {mb:.2f} MB" for B, T, mb in points)
    budget = ctx.options.get("memory_budget_mb")
    need = param_mb + buffer_mb + peak
    if budget is None:
        yield ctx.row(
            PASS,
            "peak activation MB",
            round(peak, 3),
            "",
            f"{sweep}. Measured as {method}. No budget given (options={{'memory_budget_mb': N}} to enforce one)",
        )
    else:
        status = FAIL if need > float(budget) else PASS
        yield ctx.row(
            status,
            "peak activation MB",
            round(peak, 3),
            f"model + activations <= {budget} MB",
            f"model + peak activations = {need:.2f} MB; {sweep}. Measured as {method}",
        )
    fig = _figure()
    ax = fig.add_subplot()
    for B in sorted({b for b, _, _ in points}):
        xs = [(T, mb) for b, T, mb in points if b == B]
        ax.plot([x for x, _ in xs], [y for _, y in xs], marker="o", label=f"batch {B}")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("activation MB")
    ax.set_title(f"Activation memory ({dev.type})")
    ax.legend()
    ctx.save_figure(fig, "memory_sweep")


@register(
    "speed", tier=1, summary="forward latency (torch.utils.benchmark, all threads): median, IQR, tokens/s over a sweep"
)
def speed(ctx: CheckContext):
    import torch
    from torch.utils import benchmark

    lm, dev = ctx.model, ctx.device
    threads = torch.get_num_threads()  # benchmark.Timer defaults to ONE thread otherwise
    max_run = float(ctx.options.get("speed_seconds_per_point", 0.25))
    gen = ctx.generator(10)
    points = []
    with inp.eval_mode(lm.module):
        for B, T in _sweep(lm):
            enc, dec = _pair(lm, inp.token_ids(lm, B, T, gen, dev), dev, gen)

            def step(enc=enc, dec=dec):
                with torch.no_grad():
                    lm.forward(enc, decoder_input_ids=dec)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)

            step()
            step()  # warm-up: allocator, kernel selection, lazy init
            m = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=threads).adaptive_autorange(
                threshold=0.1, min_run_time=0.05, max_run_time=max_run
            )
            points.append((B, T, m.median, m.iqr, len(m.times)))
    for B, T, med, iqr, n in points:
        noisy = iqr / med > 0.1
        yield ctx.row(
            WARN if noisy else PASS,
            f"median ms (B={B}, T={T})",
            round(med * 1e3, 4),
            "IQR/median <= 0.1",
            f"IQR {iqr * 1e3:.3g} ms ({iqr / med:.0%} of the median), {B * T / med:,.0f} tokens/s, {n} "
            f"measurements, {threads} threads, {dev.type}"
            + (
                ": noisy, other work competes for the machine; rerun on an idle one before trusting the number"
                if noisy
                else ""
            ),
        )
    fig = _figure()
    ax = fig.add_subplot()
    labels = [f"B{B}xT{T}" for B, T, *_ in points]
    ax.bar(labels, [B * T / med for B, T, med, *_ in points], color="#c44e52")
    ax.set_ylabel("tokens / s")
    ax.set_title(f"Forward throughput ({dev.type}, {threads} threads)")
    ctx.save_figure(fig, "speed_sweep")
