"""Tier 1: the critical checks. torch, numpy and matplotlib only; nothing here ever installs.

Each check is a generator of rows (see checks/base.py), named ``check_<id>`` and made of one small
function per property, joined with ``yield from``. Rules every check keeps:
- the model runs in eval mode (``inputs.eval_mode`` restores each submodule's own flag), except
  ``gradient_flow``, which trains one step on the model itself inside ``restore.preserved``:
  weights, buffers, gradients, flags and random states come back bit for bit;
- inputs come from ``checks.inputs`` (real vocabulary and length, seeded by the run seed); the
  plain eval batches and their forwards are shared between checks (``checks.shared``);
- tolerances are for fp32 and widen by the dtype's machine epsilon for half-precision models;
- thresholds are declared with each check (``register(thresholds=...)``) and overridable with the
  run option ``"<check id>.<name>"``.
The criteria follow design/CHECKS.md; where a number differs, the reason is written beside it.
"""

from __future__ import annotations

import functools
import math

from tbkit.checks import inputs as inp
from tbkit.checks import shared
from tbkit.checks.base import CheckContext, Status, register
from tbkit.checks.numeric import (
    describe_error,
    dtype_scale,
    fmt,
    kind_guess_note,
    max_abs_diff,
    new_figure,
    output_scale,
)

PASS, WARN, FAIL, SKIP = Status.PASS, Status.WARN, Status.FAIL, Status.SKIP


def _pair(model, ids, device, generator):
    """(encoder ids, decoder ids) for a forward on fresh ids: seq2seq gets a separate encoder
    input of the same shape; other kinds use ``ids`` alone (decoder ids None)."""
    if model.kind == "seq2seq":
        return inp.token_ids(model, ids.shape[0], ids.shape[1], generator, device), ids
    return ids, None


# ------------------------------------------------------------------------------------------
# summary
# ------------------------------------------------------------------------------------------
@register("summary", tier=1, summary="parameters (total/trainable), size in MB, per-module table")
def check_summary(ctx: CheckContext):
    """Parameter count (total, trainable, frozen), size in MB, a per-module table and the model
    facts the other checks use (kind and how it was decided, vocabulary, maximum length).

    Why: every other row is read against these numbers; a wrong vocabulary or kind explains most
    surprising results. Thresholds: none (information). Fix: when the kind or maximum length is
    wrong, declare it (``--kind``, config ``"kind"``/``"max_len"``)."""
    lm = ctx.model
    params = list(lm.module.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    buffer_bytes = sum(b.numel() * b.element_size() for b in lm.module.buffers())
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in params})
    yield ctx.row(
        PASS,
        "parameters",
        total,
        detail=f"{trainable:,} trainable, {total - trainable:,} frozen; dtype {', '.join(dtypes) or 'none'}",
    )
    yield ctx.row(
        PASS,
        "size_mb",
        round((param_bytes + buffer_bytes) / 2**20, 3),
        detail=f"parameters {param_bytes / 2**20:.3f} MB + buffers {buffer_bytes / 2**20:.3f} MB",
    )
    yield from _summary_modules(ctx)
    yield from _summary_facts(ctx)


def _summary_modules(ctx: CheckContext):
    module = ctx.model.module
    lines = []
    for name, child in module.named_children():
        n = sum(p.numel() for p in child.parameters())
        lines.append(f"{name} ({type(child).__name__}): {n:,} params")
    own = sum(p.numel() for p in module.parameters(recurse=False))
    if own:
        lines.append(f"(directly on {type(module).__name__}): {own:,} params")
    yield ctx.row(PASS, "modules", len(lines), detail="\n".join(lines) or "no submodules")


def _summary_facts(ctx: CheckContext):
    lm = ctx.model
    facts = (
        f"{type(lm.module).__name__}: kind {lm.kind} ({lm.kind_reason}), vocab {lm.vocab_size} "
        f"(rows of the input embedding), max length "
        f"{lm.max_len if lm.max_len else 'not found (checks use ' + str(inp.DEFAULT_MAX_LEN) + ')'}"
    )
    if lm.notes:
        facts += "; notes: " + "; ".join(str(n) for n in lm.notes)
    yield ctx.row(PASS, "model", lm.kind, detail=facts)


# ------------------------------------------------------------------------------------------
# shape
# ------------------------------------------------------------------------------------------
SHAPE_BATCHES = (1, 2, 7)


def _shape_lengths(ctx: CheckContext) -> list:
    longest = inp.usable_max_len(ctx.model)
    return sorted({n for n in (1, 2, shared.probe_length(ctx), longest) if n <= longest})


@register("shape", tier=1, summary="batch {1,2,7} x length {1,2,odd,max_len}: output (B,T,V|H); max_len+1")
def check_shape(ctx: CheckContext):
    """Every batch {1, 2, 7} x length {1, 2, an odd length, max_len} gives an output of shape
    (B, T, V) (logits) or (B, T, H) (hidden states), the same last dimension each time; one token
    past max_len must raise a clear error or work.

    Why: a model that breaks at batch 1 or length 1, or returns garbage for too-long inputs,
    fails in generation and serving long after training looked fine. Thresholds: none (every
    shape must be right). Fix: the row names the (B, T) that raised or came out wrong."""
    yield from _shape_grid(ctx)
    yield from _shape_past_max_len(ctx)


def _shape_grid(ctx: CheckContext):
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


def _shape_past_max_len(ctx: CheckContext):
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
    enc, dec = _pair(lm, inp.token_ids(lm, 1, T, gen, dev), dev, gen)
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


# ------------------------------------------------------------------------------------------
# batch_equivalence
# ------------------------------------------------------------------------------------------
@register(
    "batch_equivalence",
    tier=1,
    summary="row i of a batched forward equals the same row run alone",
    thresholds={"pass_rel": 1e-5, "warn_rel": 1e-3},
)
def check_batch_equivalence(ctx: CheckContext):
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


def _batch_equivalence_row(ctx: CheckContext, diff: float, rel: float, T: int, rows: int):
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


# ------------------------------------------------------------------------------------------
# causal
# ------------------------------------------------------------------------------------------
@register(
    "causal",
    tier=1,
    summary="decoders: changing token s must not move outputs at t < s (grad, no_grad, inference_mode)",
    thresholds={"max_change": 1e-6},
)
def check_causal(ctx: CheckContext):
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
    ids, enc = shared.batch(ctx, 1, T)  # one sequence: a leak is structural, every sequence shows it
    alt = inp.different_tokens(lm, ids, ctx.generator(3))
    with inp.eval_mode(lm.module):
        for mode in inp.MODES:
            yield from _causal_mode(ctx, mode, ids, enc, alt)


def _causal_outputs(ctx: CheckContext, mode: str, ids, enc, alt, positions) -> tuple:
    """(output of ``ids``, [output with position s changed, for each s]).

    A deterministic model gets one forward for all variants (rows stacked in one batch, so every
    comparison is between rows of the same call); a model that is random in eval gets one seeded
    forward per variant, so each sees the same random draws and its randomness is judged by
    ``determinism``, not taken for a causal leak."""
    import torch

    variants = [ids]
    for s in positions:
        x = ids.clone()
        x[:, s] = alt[:, s]
        variants.append(x)
    lm = ctx.model
    if shared.repeat_difference(ctx) == 0:
        stacked = torch.cat(variants)
        first, dec = shared.model_inputs(stacked, None if enc is None else enc.repeat(len(variants), 1))
        outs = inp.forward(lm, first, decoder_ids=dec, mode=mode, seed=ctx.seed).split(ids.shape[0])
    else:
        outs = []
        for x in variants:
            first, dec = shared.model_inputs(x, enc)
            outs.append(inp.forward(lm, first, decoder_ids=dec, mode=mode, seed=ctx.seed))
    return outs[0], list(outs[1:])


def _causal_mode(ctx: CheckContext, mode: str, ids, enc, alt):
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


def _causal_verdict(ctx: CheckContext, metric, tol, worst, leak, moved_at_s, positions, T, mode):
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


# ------------------------------------------------------------------------------------------
# padding
# ------------------------------------------------------------------------------------------
@register(
    "padding",
    tier=1,
    summary="right padding and pad content leave real positions unchanged (grad, no_grad)",
    thresholds={"pass_rel": 1e-5, "warn_rel": 1e-3},
)
def check_padding(ctx: CheckContext):
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
    lm = ctx.model
    name = inp.mask_argument(lm)
    if name is None:
        yield ctx.row(WARN, "attention_mask", "not accepted", "accepted", _no_mask_text())
        return
    T = shared.probe_length(ctx)
    if T < 2:
        yield ctx.row(SKIP, "real positions", None, "", f"maximum length {T}: no room for padding")
        return
    case = _padding_case(ctx, T)
    with inp.eval_mode(lm.module):
        for mode in ("grad", "no_grad"):
            yield from _padding_mode(ctx, case, mode, name)
        if lm.kind == "decoder":
            yield from _padding_left(ctx, case)


def _no_mask_text() -> str:
    names = ", ".join(n for n in inp.MASK_ARGUMENTS if n != "attention_mask")
    return (
        "the model's forward takes no attention_mask (nor any of " + names + "), so padded batches cannot be "
        "masked: padding tokens are attended to like real ones. Add an attention_mask=None argument and hide "
        "padded keys"
    )


def _padding_case(ctx: CheckContext, T: int) -> dict:
    """The inputs: row 1 keeps L real tokens then padding; the same tokens alone; other pad content."""
    import torch

    lm, dev = ctx.model, ctx.device
    gen = ctx.generator(4)
    ids = inp.token_ids(lm, 2, T, gen, dev)
    L = max(1, T - max(1, T // 3))
    padded, mask = inp.right_pad(lm, ids, [T, L])
    repadded, _ = inp.right_pad(lm, ids, [T, L], fill=inp.different_tokens(lm, ids, gen))
    case = dict(ids=ids, T=T, L=L, padded=padded, repadded=repadded, mask=mask)
    case["ones"] = torch.ones(1, L, dtype=mask.dtype, device=dev)
    if lm.kind == "seq2seq":  # pad the encoder side; every decoder position must stay the same
        dec = inp.token_ids(lm, 2, inp.clamp_len(lm, 8), gen, dev)
        case.update(real=lambda out: out[1], alone_args=dict(decoder_ids=dec[1:2]), batch_args=dict(decoder_ids=dec))
    else:
        case.update(real=lambda out: out[1, :L], alone_args={}, batch_args={})
    return case


def _padding_mode(ctx: CheckContext, case: dict, mode: str, name: str):
    import torch

    lm, c = ctx.model, case
    tol = ctx.threshold("pass_rel") * dtype_scale(lm)
    metric = f"real-position change ({mode})"
    L, T, real = c["L"], c["T"], c["real"]
    try:
        alone = inp.forward(lm, c["ids"][1:2, :L], c["ones"], mode=mode, seed=ctx.seed, **c["alone_args"])[0]
        out, out2 = _padded_outputs(ctx, c, mode)
    except Exception as err:
        detail = f"a right-padded batch (mask passed as {inp.mask_convention(name)}) raised under {mode}: "
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
        f"mask passed as {inp.mask_convention(name)}; row with {L} real tokens then {T - L} pads vs the same "
        f"tokens alone: {fmt(d_pad)}; other tokens under the padding: {fmt(d_fill)} (max relative {fmt(rel)})"
    )
    yield _padding_verdict(ctx, metric, rel, tol, detail, name)


def _padded_outputs(ctx: CheckContext, c: dict, mode: str) -> tuple:
    """Outputs of the padded batch and of the same batch with other tokens under the padding: one
    stacked forward for a deterministic model (rows compared within one call), two seeded forwards
    for a model that is random in eval (so its randomness is not taken for a padding leak)."""
    import torch

    lm = ctx.model
    if shared.repeat_difference(ctx) != 0:
        out = inp.forward(lm, c["padded"], c["mask"], mode=mode, seed=ctx.seed, **c["batch_args"])
        return out, inp.forward(lm, c["repadded"], c["mask"], mode=mode, seed=ctx.seed, **c["batch_args"])
    args = {k: torch.cat([v, v]) for k, v in c["batch_args"].items()}
    both = torch.cat([c["padded"], c["repadded"]])
    out = inp.forward(lm, both, torch.cat([c["mask"], c["mask"]]), mode=mode, seed=ctx.seed, **args)
    return out[: c["padded"].shape[0]], out[c["padded"].shape[0] :]


def _padding_verdict(ctx: CheckContext, metric: str, rel: float, tol: float, detail: str, name: str):
    # CHECKS.md says atol 1e-5; judged relative to the output scale (see numeric.output_scale),
    # with a WARN band up to warn_rel for kernels that change with the padded length.
    if rel <= tol:
        return ctx.row(PASS, metric, rel, f"<= {tol:.0e}", detail)
    if rel <= ctx.threshold("warn_rel") * dtype_scale(ctx.model):
        return ctx.row(WARN, metric, rel, f"<= {tol:.0e}", detail + ": more than rounding")
    fix = (
        f": padding changes the real positions, so the {name} is not honoured. Turn it into a key padding mask "
        "(e.g. src_key_padding_mask = attention_mask == 0) in every attention layer"
    )
    return ctx.row(FAIL, metric, rel, f"<= {tol:.0e}", detail + fix)


def _padding_left(ctx: CheckContext, case: dict):
    """Batched generation pads on the left. Values may legitimately shift there (absolute
    positions move), so only finiteness is judged: causal mask + left padding makes the pad
    queries' rows fully masked, and under no_grad fused paths turn that into NaN that spreads to
    real positions (CHECKS.md "Known traps"). A warning, not a failure: right padding, the
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


# ------------------------------------------------------------------------------------------
# stability
# ------------------------------------------------------------------------------------------
@register(
    "stability",
    tier=1,
    summary="random ids, one repeated token, length 1 and max_len, bf16 autocast: finite, |logit| < 1e4",
    thresholds={"max_abs_output": 1e4},
)
def check_stability(ctx: CheckContext):
    """Outputs stay finite and moderate on random ids, one repeated token, length 1, max_len and
    under bf16 autocast.

    Why: NaN/Inf at some length or precision ends a training run hours in; huge logits saturate the
    softmax and overflow in half precision. Thresholds: non-finite FAIL (bf16 autocast only WARN);
    max |output| >= ``max_abs_output`` (1e4) WARN. Fix: scale the output / init down; guard
    divisions and masked softmax rows."""
    lm, dev = ctx.model, ctx.device
    longest, T = inp.usable_max_len(lm), shared.probe_length(ctx)
    state = {"fp32_finite": True, "histogram": None}
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


def _repeated_token_forward(ctx: CheckContext, T: int):
    import torch

    lm = ctx.model
    token = int(inp.token_ids(lm, 1, 1, ctx.generator(5))[0, 0])
    ids = torch.full((1, T), token, dtype=torch.long, device=ctx.device)
    enc, dec = _pair(lm, ids, ctx.device, ctx.generator(5))
    with inp.eval_mode(lm.module):
        return inp.forward(lm, enc, decoder_ids=dec, seed=ctx.seed)


def _bf16_autocast(dev):
    import torch

    try:
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16), ""
    except Exception as err:  # the device has no bf16 autocast: nothing to judge
        return None, describe_error(err)


def _autocast_forward(ctx: CheckContext, autocast, T: int):
    first, dec = shared.model_inputs(*shared.batch(ctx, 1, T))
    with inp.eval_mode(ctx.model.module), autocast:
        return inp.forward(ctx.model, first, decoder_ids=dec, seed=ctx.seed)


def _stability_case(ctx: CheckContext, name: str, forward, shape, state: dict, bf16: bool = False):
    import torch

    metric, limit = f"max |output|: {name}", ctx.threshold("max_abs_output")
    soft = WARN if bf16 else FAIL  # CHECKS.md: non-finite under bf16 is a warning only
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


def _stability_histogram(ctx: CheckContext, histogram) -> None:
    if histogram is None or not histogram.numel():
        return
    ctx.save_figure(functools.partial(_draw_histogram, histogram, ctx.generator(5)), "output_distribution")


def _draw_histogram(histogram, generator):
    import torch

    fig = new_figure()
    ax = fig.add_subplot()
    sample = histogram[torch.randperm(histogram.numel(), generator=generator)[:200_000]].numpy()
    ax.hist(sample, bins=80, color="#4c72b0")
    ax.set_yscale("log")
    ax.set_xlabel("output value (logit or hidden state)")
    ax.set_ylabel("count")
    ax.set_title("Output distribution on random ids")
    return fig


# ------------------------------------------------------------------------------------------
# determinism
# ------------------------------------------------------------------------------------------
@register(
    "determinism",
    tier=1,
    summary="two eval forwards on the same input are identical",
    thresholds={"max_diff": 1e-6},
)
def check_determinism(ctx: CheckContext):
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


# ------------------------------------------------------------------------------------------
# init
# ------------------------------------------------------------------------------------------
def _is_norm(module) -> bool:
    import torch.nn as nn

    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)) or (
        "norm" in type(module).__name__.lower() and hasattr(module, "weight")
    )


@register(
    "init",
    tier=1,
    summary="loss at init vs ln V, norm layers, identical tensors across layers, weight scale",
    thresholds={"loss_warn_share": 0.1, "loss_fail_factor": 2.0, "max_gain": 10.0},
)
def check_init(ctx: CheckContext):
    """The state of a fresh model: finite parameters; loss at init close to ln V; norm layers at
    weight 1 / bias 0 (never flagged) and not all-zero; no weight tensors identical across layers;
    no weight matrix scaled far above the default init.

    Why: a bad init wastes the first part of training or never recovers (identical layers learn
    slowly apart, huge gains saturate softmaxes). Thresholds: |L0 - ln V| > ``loss_warn_share`` x
    ln V (0.1) WARN, L0 > ``loss_fail_factor`` x ln V (2) or non-finite FAIL; std x sqrt(fan_in) >
    ``max_gain`` (10) WARN. Fix: a small init such as normal(0, 0.02); re-initialise each layer."""

    bad = [n for n, p in ctx.model.module.named_parameters() if not _all_finite(p)]
    if bad:
        yield ctx.row(FAIL, "non-finite parameters", len(bad), "0", "NaN/Inf in: " + ", ".join(bad[:20]))
    yield from _init_loss(ctx)
    yield from _init_norm_layers(ctx)
    yield from _init_identical_tensors(ctx)
    yield from _init_weight_gain(ctx)


def _all_finite(t) -> bool:
    """One pass, no tensor of the same size allocated: min and max are finite only when every
    entry is (NaN propagates through both)."""
    import torch

    if t.numel() == 0:
        return True
    if not t.is_floating_point():
        return True
    lo, hi = torch.aminmax(t.detach())
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


def _init_loss(ctx: CheckContext):
    """1. loss at init against the uniform prediction, ln V (on the shared batch of 7)."""
    lm = ctx.model
    T = shared.probe_length(ctx)
    out = shared.forward(ctx, shared.MAX_BATCH, T)
    ids, _ = shared.batch(ctx, shared.MAX_BATCH, T)
    ln_v = math.log(lm.vocab_size)
    if not inp.output_is_logits(lm, out):
        why = (
            f"the output is hidden states of width {out.shape[-1]}, not logits over the {lm.vocab_size}-token "
            "vocabulary: there is no token loss to compare with ln V"
        )
        yield ctx.row(SKIP, "loss at init", None, "", why)
        return
    loss, what = inp.lm_loss(lm, ids, out, ctx.generator(7))
    L0 = float(loss)
    fail_at = ctx.threshold("loss_fail_factor") * ln_v
    warn_band = ctx.threshold("loss_warn_share") * ln_v
    detail = (
        f"{what} on random tokens: L0 = {fmt(L0)}, ln V = {ln_v:.3f} (a fresh model should predict close to "
        "uniform; for a trained model this comparison does not apply)"
    )
    if not math.isfinite(L0):
        why = ": the loss is not finite because the outputs hold NaN/Inf (see stability)"
        yield ctx.row(FAIL, "loss at init", L0, f"<= {fail_at:.3f} ({fail_at / ln_v:g} ln V)", detail + why)
    elif fail_at < L0:
        why = (
            ": the initial predictions are confidently wrong, usually weights or logits scaled far too large "
            "(e.g. std >> 1/sqrt(fan_in)); use a small init such as normal(0, 0.02) for the LM head"
        )
        yield ctx.row(FAIL, "loss at init", L0, f"<= {fail_at:.3f} ({fail_at / ln_v:g} ln V)", detail + why)
    else:
        status = WARN if abs(L0 - ln_v) > warn_band else PASS
        yield ctx.row(status, "loss at init", L0, f"|L0 - ln V| <= {warn_band:.3f}", detail)


def _init_norm_layers(ctx: CheckContext):
    """2. norm layers: weight 1 / bias 0 is the normal fresh state, never flagged."""
    import torch

    norms = [
        (n, m)
        for n, m in ctx.model.module.named_modules()
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
        why = "all-zero weight (the layer outputs only its bias): " + ", ".join(zeroed[:20])
        yield ctx.row(WARN, "norm layers", len(norms), "weight not all zero", why)
    else:
        what = (
            f"{at_default} of {len(norms)} at weight 1 / bias 0 (the normal fresh state)"
            if norms
            else "no normalisation layers found"
        )
        yield ctx.row(PASS, "norm layers", len(norms), "", what)


def _identical_groups(named) -> list:
    """Groups of parameter names whose tensors are exactly equal (constant tensors excluded).
    Candidates are grouped by shape, dtype and their first 64 values, so only tensors that already
    agree there are compared in full (a fresh model has almost none)."""
    import torch

    groups: dict = {}
    for n, p in named:
        if p.numel() < 2 or p.dim() == 0:
            continue
        head = p.detach().flatten()[:64]
        groups.setdefault((tuple(p.shape), p.dtype, head.cpu().numpy().tobytes()), []).append((n, p))
    identical = []
    for members in groups.values():
        if len(members) < 2:
            continue
        ref_name, ref = members[0]
        flat = ref.detach().flatten()
        if bool((flat == flat[0]).all()):
            continue  # constant tensors (zero biases, LayerNorm ones) are identical by design
        same = [n for n, p in members[1:] if torch.equal(p, ref)]
        if same:
            identical.append([ref_name, *same])
    return identical


def _init_identical_tensors(ctx: CheckContext):
    """3. tensors exactly identical across layers (constant tensors such as zero biases and
    LayerNorm ones are excluded: identical by design)."""
    import torch.nn as nn

    module = ctx.model.module
    stacks = [n for n, m in module.named_modules() if isinstance(m, (nn.TransformerEncoder, nn.TransformerDecoder))]
    identical = _identical_groups(list(module.named_parameters()))
    metric = "identical tensors across layers"
    if not identical:
        yield ctx.row(PASS, metric, 0, "0", "no two weight tensors are equal")
        return
    inside = all(any(n.startswith(s + ".") for s in stacks) for g in identical for n in g)
    listing = "; ".join(" = ".join(g[:3]) + (" …" if len(g) > 3 else "") for g in identical[:6])
    if inside:
        why = (
            f"{len(identical)} groups, all inside torch nn.TransformerEncoder/Decoder stacks, which deep-copy their "
            f"layer so every layer starts identical (torch's default; training breaks the symmetry): {listing}"
        )
        yield ctx.row(PASS, metric, len(identical), "", why)
    else:
        why = (
            f"{len(identical)} groups of exactly equal weights in different layers: {listing}. Layers that start "
            "identical learn slowly apart; re-initialise each layer (or share on purpose by tying)"
        )
        yield ctx.row(WARN, metric, len(identical), "0", why)


def _init_weight_gain(ctx: CheckContext):
    """4. scale of each weight matrix: gain = std * sqrt(fan_in). Default torch init gives ~0.58,
    xavier ~0.7-1, normal(0, 0.02) less. CHECKS.md's first cut flagged > 4, but a fresh
    transformers T5 has an LM head of std 1 (gain sqrt(d) = 5.7 at d 32) by design: its forward
    scales the hidden state by d**-0.5 first, which one matrix cannot show. So only gains an order
    of magnitude above the default init (max_gain 10) are flagged; the loss at init judges the
    combined effect of the whole init."""
    import torch.nn as nn

    gains, zero_mats = [], []
    for mname, m in ctx.model.module.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            if p.dim() != 2 or isinstance(m, nn.Embedding) or "weight" not in pname:
                continue
            fan_in = p.shape[0] if type(m).__name__ == "Conv1D" else p.shape[1]  # HF Conv1D stores (in, out)
            std = float(p.detach().float().std())
            full = f"{mname}.{pname}" if mname else pname
            if std == 0:
                zero_mats.append(full)
            gains.append((std * math.sqrt(fan_in), std, full))
    if not gains:
        return
    gains.sort(reverse=True)
    limit = ctx.threshold("max_gain")
    top = ", ".join(f"{n} std {s:.3g} (gain {g:.2f})" for g, s, n in gains[:5])
    extra = (
        f"; all-zero matrices (fine if deliberate, e.g. zero-init residual outputs): {', '.join(zero_mats[:10])}"
        if zero_mats
        else ""
    )
    status = WARN if gains[0][0] > limit else PASS
    why = ": activations grow layer by layer; scale the init down" if status is WARN else ""
    yield ctx.row(
        status, "max weight gain std*sqrt(fan_in)", gains[0][0], f"<= {limit:g}", f"largest: {top}{extra}{why}"
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
    summary="one backward on an LM loss (model restored after): every parameter reached, finite, moved by a step",
    thresholds={"max_total_norm": 1e3, "min_layer_ratio": 1e-4, "lr": 1e-3},
)
def check_gradient_flow(ctx: CheckContext):
    """One training-mode forward + backward on an LM loss on the model itself (``restore.preserved``
    puts weights, buffers, .grad, flags and random states back bit for bit), then one Adam step
    (its first step, p - lr g / (|g| + eps), computed out of place). Every trainable parameter must
    get a finite gradient and move.

    Why: a parameter without a gradient never trains (a module built but not used, a detached
    branch); NaN gradients end training; exploding or vanishing norms make it slow or unstable.
    Working on the model itself, not a deepcopy, matters: a block calling a submodule through a
    closure would run the original's weights from inside a copy. Thresholds: a trainable tensor
    with ``grad is None`` whose module never ran FAIL; non-finite gradient FAIL; all-zero gradient
    WARN; total norm > ``max_total_norm`` (1e3) WARN; min/max per-layer norm < ``min_layer_ratio``
    (1e-4) WARN; no parameter moved by Adam (lr ``lr``) FAIL. Fix: use or delete unused modules;
    lower the init scale or clip."""
    from tbkit.checks.restore import preserved

    lm = ctx.model
    with preserved(lm.module):
        facts = _backward_and_step(ctx)
    if "error" in facts:
        yield ctx.row(FAIL, "backward", None, "runs", f"forward + backward in training mode raised {facts['error']}")
        return
    yield from _gradient_connectivity(ctx, facts)
    if facts["nonfinite"]:
        detail = "NaN/Inf gradient in: " + ", ".join(facts["nonfinite"][:20])
        yield ctx.row(FAIL, "non-finite gradients", len(facts["nonfinite"]), "0", detail)
        return
    yield from _gradient_zero(ctx, facts)
    yield from _gradient_norms(ctx, facts)
    yield from _gradient_step(ctx, facts)


def _backward_and_step(ctx: CheckContext) -> dict:
    """Inside ``preserved``: the backward, the facts about each gradient, then one Adam step."""
    import torch

    lm, dev = ctx.model, ctx.device
    module = lm.module
    for p in module.parameters():
        p.grad = None  # the user's own accumulated gradients must not be counted (restored after)
    module.train()  # training is the point here: the same path (dropout on) a real step takes
    ran: set = set()
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: ran.add(n)) for n, m in module.named_modules()]
    gen = ctx.generator(8)
    ids = inp.token_ids(lm, 2, shared.probe_length(ctx), gen, dev)
    enc, dec = _pair(lm, ids, dev, gen)
    try:
        torch.manual_seed(ctx.seed)
        with torch.enable_grad():
            out = lm.forward(enc, decoder_input_ids=dec)
            loss, what = inp.lm_loss(lm, ids, out, gen)
            loss.backward()
    except Exception as err:  # the model failing in training mode is the finding
        return {"error": describe_error(err)}
    finally:
        for h in hooks:
            h.remove()
    facts = _gradient_facts(module, ran)
    facts.update(loss=float(loss.detach()), what=what)
    facts.update(_adam_step(ctx, facts["with_grad"], set(facts["zero"])))
    return facts


def _gradient_facts(module, ran: set) -> dict:
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    no_grad = [n for n, p in trainable if p.grad is None]
    owner = lambda n: n.rsplit(".", 1)[0] if "." in n else ""  # noqa: E731
    with_grad = [(n, p) for n, p in trainable if p.grad is not None]
    # one pass over the gradients: a norm is non-finite exactly when the tensor holds NaN/Inf,
    # and zero exactly when every entry is zero
    norms = {n: float(p.grad.float().norm()) for n, p in with_grad}
    return dict(
        trainable=len(trainable),
        no_grad=no_grad,
        never_ran=[n for n in no_grad if owner(n) not in ran],
        elsewhere=[n for n in no_grad if owner(n) in ran],
        with_grad=with_grad,
        nonfinite=[n for n, v in norms.items() if not math.isfinite(v)],
        zero=[n for n, v in norms.items() if v == 0],
        norms=norms,
    )


def _adam_step(ctx: CheckContext, with_grad: list, zero: list) -> dict:
    """Which parameters one Adam step moves. Adam's first step (bias-corrected) is exactly
    p - lr * g / (|g| + eps), so it is computed out of place: the same answer as
    ``torch.optim.Adam(...).step()`` without allocating its state or writing the weights."""
    import torch

    lr, eps = ctx.threshold("lr"), 1e-8
    moved, unchanged = 0, []
    with torch.no_grad():
        for n, p in with_grad:
            if n in zero:
                continue  # a zero gradient moves nothing (the all-zero row names it)
            g = p.grad
            # a strided sample (a view, no copy) settles almost every tensor; the whole tensor is
            # computed only when no sampled entry moves
            stride = max(1, p.numel() // 4096)
            ps, gs = p.reshape(-1)[::stride], g.reshape(-1)[::stride]
            if not torch.equal(ps - lr * gs / (gs.abs() + eps), ps) or not torch.equal(
                torch.addcdiv(p, g, g.abs() + eps, value=-lr), p
            ):
                moved += 1
            else:
                unchanged.append(n)
    return dict(moved=moved, unchanged=unchanged)


def _gradient_connectivity(ctx: CheckContext, f: dict):
    metric = "parameters without gradient"
    if f["never_ran"]:
        names = ", ".join(f["never_ran"][:20]) + (" …" if len(f["never_ran"]) > 20 else "")
        why = f"disconnected: {names} — their modules never run in forward, so they never train. Use them in forward or delete them"
        yield ctx.row(FAIL, metric, len(f["no_grad"]), "0", why)
    elif f["elsewhere"]:
        why = (
            f"used in forward but not connected to the checked output ({f['what']}): {', '.join(f['elsewhere'][:20])}; "
            "they feed another output (e.g. a pooler) and do not train on this loss"
        )
        yield ctx.row(WARN, metric, len(f["no_grad"]), "0", why)
    else:
        yield ctx.row(
            PASS, metric, 0, "0", f"all {f['trainable']} trainable tensors got a gradient from the {f['what']}"
        )


def _gradient_zero(ctx: CheckContext, f: dict):
    zero = f["zero"]
    detail = (
        "gradient exactly zero for: " + ", ".join(zero[:20]) + " (dead units, a zero multiplier, or a detached branch)"
        if zero
        else "every reached tensor has a non-zero gradient (embedding rows of tokens absent from the batch are zero "
        "by nature and not counted)"
    )
    yield ctx.row(WARN if zero else PASS, "all-zero gradients", len(zero), "0", detail)


def _gradient_norms(ctx: CheckContext, f: dict):
    norms = f["norms"]
    total = math.sqrt(sum(v * v for v in norms.values()))
    limit, ratio_limit = ctx.threshold("max_total_norm"), ctx.threshold("min_layer_ratio")
    why = "; exploding gradients: lower the init scale or clip" if total > limit else ""
    detail = f"loss {f['loss']:.4g} ({f['what']}){why}"
    yield ctx.row(WARN if total > limit else PASS, "total gradient norm", total, f"<= {limit:g}", detail)
    layers: dict = {}
    for n, v in norms.items():
        layers[_layer_key(n)] = layers.get(_layer_key(n), 0.0) + v * v
    layers = {k: math.sqrt(v) for k, v in layers.items()}
    positive = [v for v in layers.values() if v > 0]
    if len(positive) >= 2:
        ratio = min(positive) / max(positive)
        lo = min(layers, key=lambda k: layers[k] if layers[k] > 0 else math.inf)
        hi = max(layers, key=layers.get)
        detail = f"smallest {lo} ({fmt(layers[lo])}), largest {hi} ({fmt(layers[hi])})"
        detail += "; vanishing gradients in the smallest layer" if ratio < ratio_limit else ""
        status = WARN if ratio < ratio_limit else PASS
        yield ctx.row(status, "min/max layer gradient norm", ratio, f">= {ratio_limit:g}", detail)
    if layers:
        _gradient_figure(ctx, layers)


def _gradient_figure(ctx: CheckContext, layers: dict) -> None:
    ctx.save_figure(functools.partial(_draw_gradient_norms, layers), "gradient_norms")


def _draw_gradient_norms(layers: dict):
    fig = new_figure(6.4, max(2.5, 0.28 * len(layers) + 1))
    ax = fig.add_subplot()
    names = list(layers)
    ax.barh(range(len(names)), [max(layers[k], 1e-30) for k in names], color="#55a868")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("gradient norm")
    ax.set_title("Gradient norm per layer (one backward)")
    return fig


def _gradient_step(ctx: CheckContext, f: dict):
    n, moved, unchanged = len(f["with_grad"]), f["moved"], f["unchanged"]
    metric = "parameters changed by one Adam step"
    if moved == 0 and n:
        yield ctx.row(FAIL, metric, f"0/{n}", "all with a gradient", "no parameter changed after an optimizer step")
        return
    detail = (
        ("unchanged despite a gradient: " + ", ".join(unchanged[:20]))
        if unchanged
        else f"one Adam step at lr {ctx.threshold('lr'):g} (its first step, p - lr g / (|g| + eps), computed out of "
        "place): every tensor with a non-zero gradient moved"
    )
    yield ctx.row(WARN if unchanged else PASS, metric, f"{moved}/{n}", "all with a non-zero gradient", detail)


# ------------------------------------------------------------------------------------------
# memory
# ------------------------------------------------------------------------------------------
def _sweep(lm) -> list:
    """Length max_len/4 and max_len at batch 1, and max_len at batch 2: the growth with length
    and with batch (activation memory is linear in the batch, so two batch sizes show the slope)."""
    longest = inp.usable_max_len(lm)
    short = max(1, longest // 4)
    return sorted({(1, short), *((b, longest) for b in shared.MEASURED_BATCHES)})


def _memory_method(dev) -> str:
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
    thresholds={"budget_mb": None},
)
def check_memory(ctx: CheckContext):
    """Parameter and buffer MB, and the activation memory of a grad-mode forward at (batch, length)
    (1, max_len/4), (1, max_len) and (2, max_len) (CUDA: peak allocated; CPU: bytes autograd saves).

    Why: what fits decides batch size and sequence length before any training starts.
    Thresholds: ``budget_mb`` (option ``memory_budget_mb``; none by default): model + peak
    activations above it FAIL; without a budget the row is information. Fix: smaller batch or
    length, activation checkpointing, lower precision."""
    lm = ctx.model
    module = lm.module
    param_mb = sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20
    buffer_mb = sum(b.numel() * b.element_size() for b in module.buffers()) / 2**20
    detail = f"parameters {param_mb:.3f} MB, buffers {buffer_mb:.3f} MB"
    yield ctx.row(PASS, "parameters + buffers MB", round(param_mb + buffer_mb, 3), "", detail)
    points = []
    for B, T in _sweep(lm):
        try:  # at max_len these are the grad-mode forwards shape already ran (see shared.py)
            points.append((B, T, shared.activation_bytes(ctx, B, T) / 2**20))
        except Exception as err:  # the model failing in grad mode is the finding
            why = f"a grad-mode forward (B={B}, T={T}) raised {describe_error(err)}"
            yield ctx.row(FAIL, "peak activation MB", None, "", why)
            return
    yield _memory_verdict(ctx, points, param_mb + buffer_mb)
    _memory_figure(ctx, points)


def _memory_verdict(ctx: CheckContext, points: list, model_mb: float):
    peak = max(mb for _, _, mb in points)
    sweep = ", ".join(f"B={B} T={T}: {mb:.2f} MB" for B, T, mb in points)
    method = _memory_method(ctx.device)
    budget = ctx.options.get("memory_budget_mb", ctx.threshold("budget_mb"))
    if budget is None:
        why = f"{sweep}. Measured as {method}. No budget given (options={{'memory_budget_mb': N}} to enforce one)"
        return ctx.row(PASS, "peak activation MB", round(peak, 3), "", why)
    need = model_mb + peak
    status = FAIL if need > float(budget) else PASS
    why = f"model + peak activations = {need:.2f} MB; {sweep}. Measured as {method}"
    return ctx.row(status, "peak activation MB", round(peak, 3), f"model + activations <= {budget} MB", why)


def _memory_figure(ctx: CheckContext, points: list) -> None:
    ctx.save_figure(functools.partial(_draw_memory, points, ctx.device.type), "memory_sweep")


def _draw_memory(points: list, device_type: str):
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


# ------------------------------------------------------------------------------------------
# speed
# ------------------------------------------------------------------------------------------
SPEED_BATCHES = (1, 2)  # shapes of the shared grid: their shared forward is the warm-up


@register(
    "speed",
    tier=1,
    summary="forward latency (all threads, >= 6 timings per shape): median with 95% CI, tokens/s",
    thresholds={"min_timings": 6, "seconds_per_shape": 0.005, "latency_budget_ms": None, "min_batch_speedup": 0.5},
)
def check_speed(ctx: CheckContext):
    """Forward latency (eval, no_grad, all torch threads) at batch {1, 2} x the shared odd length
    (17, or less for short models): median of at least ``min_timings`` (6: the fewest for which an
    order-statistic 95% interval of the median exists) timings per shape, more while ``seconds_per_shape``
    (0.005 s, option ``speed_seconds_per_point``) lasts, with a 95% order-statistic confidence
    interval of the median, and tokens/s.

    Why: latency and throughput decide what a model costs to serve. A measurement judges the
    model, never the machine: how noisy the machine was goes into the detail (and the report's
    environment block), never into the status. Thresholds: median above ``latency_budget_ms``
    (option ``latency_budget_ms`` / ``--latency-budget-ms``; none by default) FAIL; tokens/s at
    the larger batch below ``min_batch_speedup`` (0.5) x the smaller batch's (the upper end of the
    confidence interval of the round-by-round ratio of interleaved timings) WARN: batching makes this model slower. Fix: look for
    per-row Python loops or batch-dependent work in forward."""
    import torch

    threads = torch.get_num_threads()
    T = shared.probe_length(ctx)
    timings = _time_forwards(ctx, SPEED_BATCHES, T)
    points = [(B, T, t) for B, t in zip(SPEED_BATCHES, timings)]
    for B, T, timing in points:
        yield _speed_row(ctx, B, T, timing, threads)
    yield from _speed_scaling(ctx, points)
    _speed_figure(ctx, points, threads)


def _time_forwards(ctx: CheckContext, batches, T: int) -> list:
    """A Timing per batch size, measured interleaved (see ``timing.measure_interleaved``)."""
    import torch

    from tbkit.checks import timing

    lm, dev = ctx.model, ctx.device

    def step_for(B):
        first, dec = _speed_inputs(ctx, B, T)

        def step():
            with torch.no_grad():
                lm.forward(first, decoder_input_ids=dec)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        return step

    steps = [step_for(B) for B in batches]
    min_n = max(2, int(ctx.threshold("min_timings")))  # never one: a spread of one sample is not a measurement
    budget = float(ctx.options.get("speed_seconds_per_point", ctx.threshold("seconds_per_shape")))
    with inp.eval_mode(lm.module):
        for B, step in zip(batches, steps):
            if B <= shared.MAX_BATCH:
                shared.forward(ctx, B, T)  # the shared forward (run once per run) is the warm-up
            else:
                step()  # warm-up: allocator, kernel selection, lazy init
        return timing.measure_interleaved(steps, min_n, budget)


def _speed_inputs(ctx: CheckContext, B: int, T: int):
    if B <= shared.MAX_BATCH:
        return shared.model_inputs(*shared.batch(ctx, B, T))
    gen = ctx.generator(10)
    return _pair(ctx.model, inp.token_ids(ctx.model, B, T, gen, ctx.device), ctx.device, gen)


def _speed_row(ctx: CheckContext, B: int, T: int, t, threads: int):
    from tbkit.checks.timing import machine_load

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
    budget = ctx.options.get("latency_budget_ms", ctx.threshold("latency_budget_ms"))
    metric = f"median ms (B={B}, T={T})"
    if budget is None:
        return ctx.row(PASS, metric, round(med * 1e3, 4), "", detail + ". No latency budget given")
    over = med * 1e3 > float(budget)
    why = f": above the latency budget of {budget} ms" if over else ""
    return ctx.row(FAIL if over else PASS, metric, round(med * 1e3, 4), f"<= {budget} ms", detail + why)


def _speed_scaling(ctx: CheckContext, points: list):
    """A property of the model: tokens/s should not fall when the batch grows. Judged on the
    round-by-round ratios of the interleaved timings (a burst of other work hits both sides of a
    round), and only when even the upper end of the ratio's confidence interval is below
    ``min_batch_speedup``."""
    from tbkit.checks import timing

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


def _speed_figure(ctx: CheckContext, points: list, threads: int) -> None:
    tokens_per_s = [(f"B{B}xT{T}", B * T / t.median) for B, T, t in points]
    ctx.save_figure(functools.partial(_draw_speed, tokens_per_s, ctx.device.type, threads), "speed_sweep")


def _draw_speed(tokens_per_s: list, device_type: str, threads: int):
    fig = new_figure()
    ax = fig.add_subplot()
    ax.bar([label for label, _ in tokens_per_s], [v for _, v in tokens_per_s], color="#c44e52")
    ax.set_ylabel("tokens / s")
    ax.set_title(f"Forward throughput ({device_type}, {threads} threads)")
    return fig
