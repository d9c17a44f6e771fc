"""The ``init`` check (Tier 1)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from tbkit.checks import inputs as inp
from tbkit.checks import shared
from tbkit.checks.base import CheckContext, Row, register
from tbkit.checks.numeric import fmt, read_back
from tbkit.checks.spec import Threshold
from tbkit.checks.tier1.common import FAIL, PASS, SKIP, WARN

if TYPE_CHECKING:
    import torch
    from torch import nn


def _is_norm(module: nn.Module) -> bool:
    import torch.nn as nn

    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)) or (
        "norm" in type(module).__name__.lower() and hasattr(module, "weight")
    )


@register(
    "init",
    tier=1,
    summary="loss at init vs ln V, norm layers, identical tensors across layers, weight scale",
    thresholds=(
        Threshold("loss_warn_share", float, 0.1, "share of ln V", "|loss at init - ln V| above it WARN"),
        Threshold("loss_fail_factor", float, 2.0, "x ln V", "loss at init above this multiple of ln V FAIL"),
        Threshold("max_gain", float, 10.0, "x default init", "weight scale above this multiple WARN"),
    ),
)
def check_init(ctx: CheckContext) -> Iterator[Row]:
    """The state of a fresh model: finite parameters; loss at init close to ln V; norm layers at
    weight 1 / bias 0 (never flagged) and not all-zero; no weight tensors identical across layers;
    no weight matrix scaled far above the default init.

    Why: a bad init wastes the first part of training or never recovers (identical layers learn
    slowly apart, huge gains saturate softmaxes). Thresholds: |L0 - ln V| > ``loss_warn_share`` x
    ln V (0.1) WARN, L0 > ``loss_fail_factor`` x ln V (2) or non-finite FAIL; std x sqrt(fan_in) >
    ``max_gain`` (10) WARN. Fix: a small init such as normal(0, 0.02); re-initialise each layer."""

    bad = _non_finite(list(ctx.model.module.named_parameters()))
    if bad:
        yield ctx.row(FAIL, "non-finite parameters", len(bad), "0", "NaN/Inf in: " + ", ".join(bad[:20]))
    yield from _init_loss(ctx)
    yield from _init_norm_layers(ctx)
    yield from _init_identical_tensors(ctx)
    yield from _init_weight_gain(ctx)


def _non_finite(named: list[tuple[str, nn.Parameter]]) -> list[str]:
    """Names of the floating-point parameters holding NaN or Inf. Min and max are finite only when
    every entry is (NaN propagates through both): one pass, no tensor of the same size allocated,
    and one read-back for all parameters."""
    import torch

    floats = [(n, p.detach()) for n, p in named if p.is_floating_point() and p.numel()]
    flags = read_back([torch.isfinite(torch.stack(torch.aminmax(p))).all() for _, p in floats])
    return [n for (n, _), finite in zip(floats, flags) if not finite]


def _init_loss(ctx: CheckContext) -> Iterator[Row]:
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


def _init_norm_layers(ctx: CheckContext) -> Iterator[Row]:
    """2. norm layers: weight 1 / bias 0 is the normal fresh state, never flagged."""
    import torch

    norms = [
        (n, m)
        for n, m in ctx.model.module.named_modules()
        if _is_norm(m) and isinstance(getattr(m, "weight", None), torch.Tensor)
    ]
    states = []
    with torch.no_grad():
        for _, m in norms:
            w, b = m.weight, getattr(m, "bias", None)
            fresh = (w == 1).all() if not isinstance(b, torch.Tensor) else (w == 1).all() & (b == 0).all()
            states += [fresh, (w == 0).all()]
    flags = read_back(states)  # one read-back for all layers: (fresh, all-zero) per layer
    at_default = sum(1 for fresh in flags[0::2] if fresh)
    zeroed = [n for (n, _), fresh, zero in zip(norms, flags[0::2], flags[1::2]) if zero and not fresh]
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


def _identical_groups(named: list[tuple[str, nn.Parameter]]) -> list[list[str]]:
    """Groups of parameter names whose tensors are exactly equal (constant tensors excluded).
    Candidates are grouped by shape, dtype and their first 64 values, so only tensors that already
    agree there are compared in full (a fresh model has almost none)."""
    import torch

    candidates = [(n, p) for n, p in named if p.numel() >= 2 and p.dim() > 0]
    groups: dict[tuple[tuple[int, ...], torch.dtype, bytes], list[tuple[str, nn.Parameter]]] = {}
    for (n, p), head in zip(candidates, _heads([p for _, p in candidates])):
        groups.setdefault((tuple(p.shape), p.dtype, head), []).append((n, p))
    identical: list[list[str]] = []
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


def _heads(params: list[nn.Parameter]) -> list[bytes]:
    """The bytes of each tensor's first 64 values, copied to the host once per dtype and device
    rather than once per tensor (any dtype, bfloat16 included, through a byte view)."""
    import torch

    by_kind: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, p in enumerate(params):
        by_kind.setdefault((p.dtype, p.device), []).append(i)
    heads: list[bytes] = [b""] * len(params)
    for members in by_kind.values():
        parts = [params[i].detach().flatten()[:64] for i in members]
        raw = torch.cat(parts).contiguous().view(torch.uint8).cpu().numpy().tobytes()
        width, start = parts[0].element_size(), 0
        for i, part in zip(members, parts):
            heads[i] = raw[start : start + part.numel() * width]
            start += part.numel() * width
    return heads


def _init_identical_tensors(ctx: CheckContext) -> Iterator[Row]:
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


def _init_weight_gain(ctx: CheckContext) -> Iterator[Row]:
    """4. scale of each weight matrix: gain = std * sqrt(fan_in). Default torch init gives ~0.58,
    xavier ~0.7-1, normal(0, 0.02) less. A first cut flagged > 4, but a fresh
    transformers T5 has an LM head of std 1 (gain sqrt(d) = 5.7 at d 32) by design: its forward
    scales the hidden state by d**-0.5 first, which one matrix cannot show. So only gains an order
    of magnitude above the default init (max_gain 10) are flagged; the loss at init judges the
    combined effect of the whole init."""
    import torch.nn as nn

    matrices = []
    for mname, m in ctx.model.module.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            if p.dim() != 2 or isinstance(m, nn.Embedding) or "weight" not in pname:
                continue
            fan_in = p.shape[0] if type(m).__name__ == "Conv1D" else p.shape[1]  # HF Conv1D stores (in, out)
            matrices.append((f"{mname}.{pname}" if mname else pname, fan_in, p.detach()))
    stds = read_back([p.float().std() for _, _, p in matrices])  # one read-back for all matrices
    zero_mats = [full for (full, _, _), std in zip(matrices, stds) if std == 0]
    gains = [(std * math.sqrt(fan_in), std, full) for (full, fan_in, _), std in zip(matrices, stds)]
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
