"""The ``attention`` check (Tier 2)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Optional, cast

from tbkit.checks import attention_capture, inputs
from tbkit.checks.attention_capture import AttentionMap, CaptureResult
from tbkit.checks.base import CheckContext, Row, Status, register
from tbkit.checks.numeric import kind_guess_note
from tbkit.checks.spec import Threshold
from tbkit.checks.tier2.common import fmt_list, grad_mode_failure

if TYPE_CHECKING:  # torch is imported lazily; these are annotations only
    import torch

    from tbkit.sources.loaded import LoadedModel

# one captured map's statistics (``_map_stats``), with its display "label" added by ``_label_repeated_calls``
MapStats = dict[str, Any]

# Sizes of the probing inputs: small enough for a CPU, long enough for entropy and 1 % to mean
# something. Each check clamps them to the model's real maximum length.
ATTN_BATCH, ATTN_LEN = 2, 24


FUTURE_MASS_TOL = 1e-6  # any attention weight on a future key above this is a leak


REDUNDANT_COSINE = 0.95  # two heads whose (non-uniform part of the) maps agree this much


CAPTURE_FIDELITY = 1e-4  # outputs with/without capture may differ by kernel rounding only


MAX_HEATMAP_LAYERS = 12


@register(
    "attention",
    tier=2,
    summary="per-head attention: future-key mass (decoders), entropy, sparsity, redundancy, heatmaps",
    thresholds=(
        Threshold("future_mass", float, FUTURE_MASS_TOL, "share", "attention weight on a future key above it FAIL"),
        Threshold("redundant_cosine", float, REDUNDANT_COSINE, "cosine", "two heads this alike are redundant"),
        Threshold("capture_fidelity", float, CAPTURE_FIDELITY, "relative", "outputs with/without capture may differ"),
    ),
)
def check_attention(ctx: CheckContext) -> Iterator[Row]:
    """Per-head attention weights (hooks on nn.MultiheadAttention with per-head weights, or
    softmax(QK^T) recomputed from SDPA calls): weight on future keys, entropy, sparsity, redundant
    heads, heatmaps.

    Why: weight on a future key is a causal leak seen directly in the weights; collapsed or
    duplicated heads waste capacity. Thresholds: decoders' self-attention mass on future keys >
    ``future_mass`` (1e-6) FAIL (the row says when the kind was inferred); outputs with and without
    capture differing by more than ``capture_fidelity`` (1e-4) x max|out| WARN; two heads of a layer
    whose maps' departure from uniform have cosine > ``redundant_cosine`` (0.95) WARN; entropy and
    sparsity are information. Weights that cannot be captured: SKIP with the reason. Fix: pass a
    causal mask that blocks every key after the query."""
    model = ctx.model
    ids, decoder_ids, lengths, self_len = _attention_inputs(ctx)
    with inputs.eval_mode(model.module):
        try:
            run = lambda: model.forward(ids, decoder_input_ids=decoder_ids)  # noqa: E731
            result = attention_capture.capture(run, model.module, ATTN_BATCH, lengths)
        except RuntimeError as err:
            broken = grad_mode_failure(ctx, err, "its attention weights")
            if broken is None:
                raise
            yield broken
            return
    if not result.maps:
        why = attention_capture.describe_nothing_found(model.module)
        yield ctx.row(Status.SKIP, "attention_weights", None, "", why)
        return
    yield _attention_fidelity(ctx, result, self_len)
    stats = [_map_stats(m) for m in result.maps]
    _label_repeated_calls(stats)
    yield _attention_future_mass(ctx, stats, self_len)
    yield from _attention_entropy(ctx, stats)
    yield _attention_redundancy(ctx, stats, result.maps)
    _attention_heatmaps(ctx, result.maps)


def _attention_inputs(ctx: CheckContext) -> tuple[torch.Tensor, Optional[torch.Tensor], set[int], int]:
    """(ids, decoder ids or None, lengths to capture, self-attention length)."""
    model = ctx.model
    batch, length = ATTN_BATCH, _length_unlike_vocab(model, ATTN_LEN)
    ids = inputs.token_ids(model, batch, length, ctx.generator(201), ctx.device)
    if model.kind != "seq2seq":
        return ids, None, {length}, length
    # A source longer than the target keeps the decoder's self-attention (T×T) apart from
    # the encoder's (S×S) and the cross-attention (T×S): only the first can leak the future.
    src_len = _length_unlike_vocab(model, length + 3)
    length = min(length, src_len - 1) if src_len > 1 else length
    ids = inputs.token_ids(model, batch, src_len, ctx.generator(201), ctx.device)
    decoder_ids = inputs.token_ids(model, batch, length, ctx.generator(202), ctx.device)
    return ids, decoder_ids, {src_len, length}, length


def _attention_fidelity(ctx: CheckContext, result: CaptureResult, length: int) -> Row:
    change = result.max_output_change
    plain = cast("torch.Tensor", result.output_without_capture)  # capture() sets it before anything else
    scale = max(1.0, float(plain.float().abs().max()))
    limit = ctx.threshold("capture_fidelity")
    sources = sorted({m.source for m in result.maps})
    how = (
        f"{len(result.maps)} attention maps from {len({m.layer for m in result.maps})} modules "
        f"({', '.join(sources)}), inputs {ATTN_BATCH}×{length}; captured in grad mode with the "
        "torch.backends.mha fast path disabled (the fused eval path never calls the attention "
        "module's Python forward)"
    )
    if len(result.maps) > MAX_HEATMAP_LAYERS:
        how += f"; heatmaps drawn for the first {MAX_HEATMAP_LAYERS} maps"
    if math.isfinite(change) and change <= limit * scale:
        detail = f"{how}; model outputs with and without capture agree (max |Δ| {change:.2e})"
        return ctx.row(Status.PASS, "capture_output_change", change, f"<= {limit:g}·max|out|", detail)
    detail = (
        f"{how}; the model's output changed by {change:.3g} when weights were captured, so the weights below may "
        "not be those of an ordinary forward (the model may branch on need_weights or on grad mode)"
    )
    return ctx.row(Status.WARN, "capture_output_change", change, f"<= {limit:g}·max|out|", detail)


def _attention_future_mass(ctx: CheckContext, stats: list[MapStats], self_len: int) -> Row:
    """Future-key mass: decoders' self-attention (and seq2seq decoder self-attention) only."""
    tol = ctx.threshold("future_mass")
    square = [s for s in stats if s["tq"] == s["tk"] == self_len]
    if ctx.model.kind not in ("decoder", "seq2seq"):
        maxf = max((s["future_max"] for s in square), default=0.0)
        why = "encoder: attention is bidirectional by design; weight on later keys is expected, not a failure"
        return ctx.row(Status.PASS, "future_key_mass", maxf, "n/a (encoder)", why)
    if not square:
        why = (
            "no self-attention map of the decoder length was captured, so causality of the attention weights "
            "could not be checked"
        )
        return ctx.row(Status.WARN, "future_key_mass", None, f"<= {tol:g}", why)
    worst = max(square, key=lambda s: s["future_max"])
    leaks = [f"{s['label']} head {h}: {v:.3g}" for s in square for h, v in enumerate(s["future_per_head"]) if v > tol]
    if not leaks:
        why = f"no weight on future keys in {len(square)} self-attention map(s), every head"
        return ctx.row(Status.PASS, "future_key_mass", worst["future_max"], f"<= {tol:g}", why)
    why = (
        f"attention puts weight on future keys (query t attends to keys after t) in {len(leaks)} head(s): "
        f"{'; '.join(leaks[:8])}{' …' if len(leaks) > 8 else ''}. The causal mask is missing or wrong: pass a "
        "mask that blocks every key after the query (e.g. torch.ones(T, T, dtype=torch.bool).triu(1) as "
        "attn_mask)" + kind_guess_note(ctx.model)
    )
    return ctx.row(Status.FAIL, "future_key_mass", worst["future_max"], f"<= {tol:g}", why)


def _attention_entropy(ctx: CheckContext, stats: list[MapStats]) -> Iterator[Row]:
    """Entropy and sparsity: information rows, one per captured map."""
    for s in stats:
        yield ctx.row(
            Status.PASS,
            f"entropy[{s['label']}]",
            round(s["entropy_mean"], 4),
            "info",
            f"{s['source']} {s['tq']}×{s['tk']}, {s['heads']} heads; entropy / ln(visible keys) per "
            f"head: {fmt_list(s['entropy_per_head'])} (1 = uniform, 0 = one key); sparsity (share of "
            f"visible keys outside the top-90 % mass) per head: {fmt_list(s['sparsity_per_head'])}",
        )


def _attention_redundancy(ctx: CheckContext, stats: list[MapStats], maps: list[AttentionMap]) -> Row:
    """Redundant heads, compared on their departure from uniform attention: untrained heads are all
    near-uniform, and raw maps would then look "redundant" for every freshly built model."""
    cosine = ctx.threshold("redundant_cosine")
    pairs: list[str] = []
    uniform: list[str] = []
    for s, m in zip(stats, maps):
        p, u = _redundant_pairs(m.weights, cosine)
        pairs += [f"{s['label']} heads {a}&{b} ({c:.3f})" for a, b, c in p]
        uniform += [f"{s['label']} head {h}" for h in u]
    extra = f"; heads with uniform attention (left out of the comparison): {', '.join(uniform[:8])}" if uniform else ""
    if not pairs:
        why = f"no two heads of a layer attend the same way{extra}"
        return ctx.row(Status.PASS, "redundant_head_pairs", 0, f"cosine > {cosine}", why)
    why = (
        f"heads that attend the same way (cosine of their maps' departure from uniform): "
        f"{'; '.join(pairs[:8])}{' …' if len(pairs) > 8 else ''}; such heads add parameters, not capacity{extra}"
    )
    return ctx.row(Status.WARN, "redundant_head_pairs", len(pairs), f"cosine > {cosine}", why)


def _length_unlike_vocab(model: LoadedModel, wanted: int) -> int:
    """A usable length that differs from the vocabulary size, so a (B, T, V) output softmax can never
    pass for a (query × key) attention square during capture."""
    length = inputs.clamp_len(model, wanted)
    if length == int(model.vocab_size) and length > 2:
        length -= 1
    return length


def _label_repeated_calls(stats: list[MapStats]) -> None:
    """A display label per map: the module name, plus "#n" when one module attended several times."""
    counts: dict[str, int] = {}
    for s in stats:
        counts[s["layer"]] = counts.get(s["layer"], 0) + 1
    seen: dict[str, int] = {}
    for s in stats:
        name = s["layer"] or "<root>"
        seen[s["layer"]] = seen.get(s["layer"], 0) + 1
        s["label"] = f"{name}#{seen[s['layer']]}" if counts[s["layer"]] > 1 else name


def _map_stats(m: AttentionMap) -> MapStats:
    import torch

    w = m.weights  # (B, H, Tq, Tk)
    b, h, tq, tk = w.shape
    visible = (w > 0).sum(dim=-1)  # keys a query could see (masked keys get exactly 0)
    plogp = torch.where(w > 0, w * torch.log(w.clamp_min(1e-30)), torch.zeros_like(w))
    entropy = -plogp.sum(dim=-1)
    rows = visible >= 2  # a query that sees one key has no entropy to normalise
    norm = torch.where(rows, entropy / torch.log(visible.clamp_min(2).float()), torch.zeros_like(entropy))
    denom = rows.sum(dim=(0, 2)).clamp_min(1)
    entropy_per_head = (norm.sum(dim=(0, 2)) / denom).tolist()
    # Sparsity: how many of the visible keys are needed to hold 90 % of a query's weight.
    sorted_w = w.sort(dim=-1, descending=True).values
    needed = (sorted_w.cumsum(dim=-1) < 0.9).sum(dim=-1) + 1
    sparsity = torch.where(rows, 1.0 - needed.float() / visible.clamp_min(1).float(), torch.zeros_like(norm))
    sparsity_per_head = (sparsity.sum(dim=(0, 2)) / denom).tolist()
    future: list[float] = []
    if tq == tk:
        upper = torch.ones(tq, tk, dtype=torch.bool).triu(1)
        future = (w * upper).sum(dim=-1).amax(dim=(0, 2)).tolist()  # worst query, per head
    return {
        "layer": m.layer,
        "source": m.source,
        "heads": h,
        "tq": tq,
        "tk": tk,
        "entropy_per_head": entropy_per_head,
        "entropy_mean": float(sum(entropy_per_head) / max(1, len(entropy_per_head))),
        "sparsity_per_head": sparsity_per_head,
        "future_per_head": future,
        "future_max": max(future) if future else 0.0,
    }


def _redundant_pairs(
    w: torch.Tensor, cosine: float = REDUNDANT_COSINE
) -> tuple[list[tuple[int, int, float]], list[int]]:
    """Head pairs whose maps' departure from uniform attention has cosine > ``cosine``."""
    visible = (w > 0).float()
    uniform = visible / visible.sum(dim=-1, keepdim=True).clamp_min(1.0)
    dev = (w - uniform).permute(1, 0, 2, 3).reshape(w.shape[1], -1)  # (H, everything)
    norms = dev.norm(dim=1)
    flat = norms <= 1e-4 * math.sqrt(dev.shape[1])
    pairs: list[tuple[int, int, float]] = []
    unit = dev / norms.clamp_min(1e-12).unsqueeze(1)
    sim: list[list[float]] = (unit @ unit.T).tolist()  # one read-back, not one per pair of heads
    is_flat: list[bool] = flat.tolist()
    for a in range(w.shape[1]):
        for b in range(a + 1, w.shape[1]):
            if not is_flat[a] and not is_flat[b] and sim[a][b] > cosine:
                pairs.append((a, b, sim[a][b]))
    return pairs, [h for h in range(w.shape[1]) if is_flat[h]]


def _attention_heatmaps(ctx: CheckContext, maps: list[AttentionMap]) -> None:
    from matplotlib.figure import Figure

    for i, m in enumerate(maps[:MAX_HEATMAP_LAYERS]):
        heads = m.heads
        cols = min(heads, 8)
        rows = math.ceil(heads / cols)
        fig = Figure(figsize=(2.0 * cols, 2.0 * rows + 0.4))
        for h in range(heads):
            ax = fig.add_subplot(rows, cols, h + 1)
            ax.imshow(m.weights[0, h].numpy(), cmap="viridis", vmin=0.0, aspect="auto")
            ax.set_title(f"head {h}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"{m.layer or '<root>'} ({m.source}): query rows, key columns, sample 0", fontsize=9, y=1.0)
        fig.subplots_adjust(top=0.78)
        ctx.save_figure(fig, f"heads_{i:02d}_{m.layer or 'root'}")
