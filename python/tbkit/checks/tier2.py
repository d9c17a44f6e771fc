"""Tier 2 — what the model looks at, and how fragile it is.

Four checks (ids are public, see CHECKS.md):

- ``attention``   per-head weights (tiers/attention_capture.py), entropy, sparsity, redundant heads,
                  heatmaps; for decoders, weight on future keys is a FAIL.
- ``attribution`` captum LayerIntegratedGradients on the input embedding; for decoders, attribution
                  to tokens after the target position is a FAIL. Needs captum, obtained by the runner
                  through the install gate (``needs=``); a refusal becomes a SKIP row there.
- ``robustness``  token substitution at 1/5/10/20 % of positions: KL and top-1 agreement at the
                  positions that were not substituted; degradation curve.
- ``capacity``    effective rank of weight matrices and of per-layer hidden states.

Every check runs the model in eval mode (restoring the user's flags afterwards) on seeded inputs
from tiers/inputs.py. torch, captum and matplotlib are imported inside the checks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from tbkit.checks import inputs
from tbkit.checks.base import CheckContext, Row, Status, register

# Sizes of the probing inputs: small enough for a CPU, long enough for entropy and 1 % to mean
# something. Each check clamps them to the model's real maximum length.
ATTN_BATCH, ATTN_LEN = 2, 24
ATTR_BATCH, ATTR_LEN = 2, 16
ROBUST_BATCH, ROBUST_LEN = 4, 100  # 100 positions: 1 % is exactly one token per row
CAPACITY_BATCH, CAPACITY_LEN = 4, 64

FUTURE_MASS_TOL = 1e-6  # CHECKS.md: any attention weight on a future key above this is a leak
REDUNDANT_COSINE = 0.95  # two heads whose (non-uniform part of the) maps agree this much
CAPTURE_FIDELITY = 1e-4  # outputs with/without capture may differ by kernel rounding only
ATTR_REL_DELTA = 0.05  # relative IG convergence delta above which 50 steps are not enough
ATTR_STEPS = (50, 200)
ATTR_LEAK_TOL = 1e-6  # share of |attribution| allowed on tokens after the target (float noise)
ROBUST_PS = (0.01, 0.05, 0.10, 0.20)
ROBUST_WARN_AGREEMENT = 0.5
ERANK_RATIO_WARN = 0.1
ERANK_COLLAPSE_RATIO = 0.25  # deepest layer's erank below this share of the first layer's
MAX_HEATMAP_LAYERS = 12


# ---------------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------------
@register(
    "attention",
    tier=2,
    summary="per-head attention: future-key mass (decoders), entropy, sparsity, redundancy, heatmaps",
)
def check_attention(ctx: CheckContext) -> Iterator[Row]:
    from tbkit.checks import attention_capture

    model = ctx.model
    batch, length = ATTN_BATCH, _length_unlike_vocab(model, ATTN_LEN)
    ids = inputs.token_ids(model, batch, length, ctx.generator(201), ctx.device)
    decoder_ids, lengths, self_len = None, {length}, length
    if model.kind == "seq2seq":
        # A source longer than the target keeps the decoder's self-attention (T×T) apart from
        # the encoder's (S×S) and the cross-attention (T×S): only the first can leak the future.
        src_len = _length_unlike_vocab(model, length + 3)
        length = min(length, src_len - 1) if src_len > 1 else length
        ids = inputs.token_ids(model, batch, src_len, ctx.generator(201), ctx.device)
        decoder_ids = inputs.token_ids(model, batch, length, ctx.generator(202), ctx.device)
        lengths, self_len = {src_len, length}, length

    def run():
        return model.forward(ids, decoder_input_ids=decoder_ids)

    with inputs.eval_mode(model.module):
        try:
            result = attention_capture.capture(run, model.module, batch, lengths)
        except RuntimeError as err:
            broken = _grad_mode_failure(ctx, err, "its attention weights")
            if broken is None:
                raise
            yield broken
            return
    if not result.maps:
        yield ctx.row(
            Status.SKIP, "attention_weights", None, "", attention_capture.describe_nothing_found(model.module)
        )
        return

    change = result.max_output_change
    scale = max(1.0, float(result.output_without_capture.float().abs().max()))
    sources = sorted({m.source for m in result.maps})
    how = (
        f"{len(result.maps)} attention maps from {len({m.layer for m in result.maps})} modules "
        f"({', '.join(sources)}), inputs {batch}×{length}; captured in grad mode with the "
        "torch.backends.mha fast path disabled (the fused eval path never calls the attention "
        "module's Python forward)"
    )
    if len(result.maps) > MAX_HEATMAP_LAYERS:
        how += f"; heatmaps drawn for the first {MAX_HEATMAP_LAYERS} maps"
    if math.isfinite(change) and change <= CAPTURE_FIDELITY * scale:
        yield ctx.row(
            Status.PASS,
            "capture_output_change",
            change,
            f"<= {CAPTURE_FIDELITY:g}·max|out|",
            f"{how}; model outputs with and without capture agree (max |Δ| {change:.2e})",
        )
    else:
        yield ctx.row(
            Status.WARN,
            "capture_output_change",
            change,
            f"<= {CAPTURE_FIDELITY:g}·max|out|",
            f"{how}; the model's output changed by {change:.3g} when weights were captured, so the "
            "weights below may not be those of an ordinary forward (the model may branch on "
            "need_weights or on grad mode)",
        )

    stats = [_map_stats(m) for m in result.maps]
    _label_repeated_calls(stats)

    # Future-key mass: decoders' self-attention (and seq2seq decoder self-attention) only.
    square = [s for s in stats if s["tq"] == s["tk"] == self_len]
    if model.kind in ("decoder", "seq2seq"):
        if not square:
            yield ctx.row(
                Status.WARN,
                "future_key_mass",
                None,
                f"<= {FUTURE_MASS_TOL:g}",
                "no self-attention map of the decoder length was captured, so causality of the "
                "attention weights could not be checked",
            )
        else:
            worst = max(square, key=lambda s: s["future_max"])
            leaks = [
                f"{s['label']} head {h}: {v:.3g}"
                for s in square
                for h, v in enumerate(s["future_per_head"])
                if v > FUTURE_MASS_TOL
            ]
            if leaks:
                yield ctx.row(
                    Status.FAIL,
                    "future_key_mass",
                    worst["future_max"],
                    f"<= {FUTURE_MASS_TOL:g}",
                    f"attention puts weight on future keys (query t attends to keys after t) in "
                    f"{len(leaks)} head(s): {'; '.join(leaks[:8])}{' …' if len(leaks) > 8 else ''}. "
                    "The causal mask is missing or wrong: pass a mask that blocks every key after the "
                    "query (e.g. torch.ones(T, T, dtype=torch.bool).triu(1) as attn_mask)",
                )
            else:
                yield ctx.row(
                    Status.PASS,
                    "future_key_mass",
                    worst["future_max"],
                    f"<= {FUTURE_MASS_TOL:g}",
                    f"no weight on future keys in {len(square)} self-attention map(s), every head",
                )
    else:
        maxf = max((s["future_max"] for s in square), default=0.0)
        yield ctx.row(
            Status.PASS,
            "future_key_mass",
            maxf,
            "n/a (encoder)",
            "encoder: attention is bidirectional by design; weight on later keys is expected, not a failure",
        )

    # Entropy and sparsity: information rows, one per captured map.
    for s in stats:
        yield ctx.row(
            Status.PASS,
            f"entropy[{s['label']}]",
            round(s["entropy_mean"], 4),
            "info",
            f"{s['source']} {s['tq']}×{s['tk']}, {s['heads']} heads; entropy / ln(visible keys) per "
            f"head: {_fmt_list(s['entropy_per_head'])} (1 = uniform, 0 = one key); sparsity (share of "
            f"visible keys outside the top-90 % mass) per head: {_fmt_list(s['sparsity_per_head'])}",
        )

    # Redundant heads, compared on their departure from uniform attention: untrained heads are all
    # near-uniform, and raw maps would then look "redundant" for every freshly built model.
    pairs, uniform = [], []
    for s, m in zip(stats, result.maps):
        p, u = _redundant_pairs(m.weights)
        pairs += [f"{s['label']} heads {a}&{b} ({c:.3f})" for a, b, c in p]
        uniform += [f"{s['label']} head {h}" for h in u]
    extra = f"; heads with uniform attention (left out of the comparison): {', '.join(uniform[:8])}" if uniform else ""
    if pairs:
        yield ctx.row(
            Status.WARN,
            "redundant_head_pairs",
            len(pairs),
            f"cosine > {REDUNDANT_COSINE}",
            f"heads that attend the same way (cosine of their maps' departure from uniform): "
            f"{'; '.join(pairs[:8])}{' …' if len(pairs) > 8 else ''}; such heads add parameters, not "
            f"capacity{extra}",
        )
    else:
        yield ctx.row(
            Status.PASS,
            "redundant_head_pairs",
            0,
            f"cosine > {REDUNDANT_COSINE}",
            f"no two heads of a layer attend the same way{extra}",
        )

    _attention_heatmaps(ctx, result.maps)


def _length_unlike_vocab(model, wanted: int) -> int:
    """A usable length that differs from the vocabulary size, so a (B, T, V) output softmax can never
    pass for a (query × key) attention square during capture."""
    length = inputs.clamp_len(model, wanted)
    if length == int(model.vocab_size) and length > 2:
        length -= 1
    return length


def _grad_mode_failure(ctx: CheckContext, err: Exception, what: str):
    """A FAIL row when the forward works under no_grad but raises in grad mode, else None.

    The classic case (CHECKS.md, known traps): ``is_causal=True`` without a mask raises in grad mode,
    while under eval + no_grad the fused fast path runs and silently ignores causality."""
    import torch

    model = ctx.model
    ids = inputs.token_ids(model, 1, inputs.clamp_len(model, 8), ctx.generator(299), ctx.device)
    dec = ids if model.kind == "seq2seq" else None
    try:
        with torch.no_grad():
            model.forward(ids, decoder_input_ids=dec)
    except Exception:
        return None  # the model is broken in every mode: let the runner report the crash as it is
    try:
        with torch.enable_grad():
            model.forward(ids, decoder_input_ids=dec)
    except Exception:
        pass  # confirmed: grad mode alone breaks the model
    else:
        return None  # a plain grad-mode forward works: the failure came from the capture itself
    text = " ".join(str(err).split())
    hint = ""
    if "is_causal" in text:
        hint = (
            " The model passes is_causal=True without an attention mask: torch refuses that in grad mode, "
            "and under eval + no_grad the fused fast path silently ignores causality. Pass an explicit "
            "causal mask (nn.Transformer.generate_square_subsequent_mask(T)) as mask= / attn_mask="
        )
    return ctx.row(
        Status.FAIL,
        "forward_in_grad_mode",
        None,
        "runs with autograd on",
        f"the model runs under no_grad but raises in grad mode (as in training), so {what} "
        f"could not be computed: {text[:400]}.{hint}",
    )


def _label_repeated_calls(stats) -> None:
    """A display label per map: the module name, plus "#n" when one module attended several times."""
    counts: dict = {}
    for s in stats:
        counts[s["layer"]] = counts.get(s["layer"], 0) + 1
    seen: dict = {}
    for s in stats:
        name = s["layer"] or "<root>"
        seen[s["layer"]] = seen.get(s["layer"], 0) + 1
        s["label"] = f"{name}#{seen[s['layer']]}" if counts[s["layer"]] > 1 else name


def _map_stats(m) -> dict:
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
    future = []
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


def _redundant_pairs(w):
    """Head pairs whose maps' departure from uniform attention has cosine > REDUNDANT_COSINE."""
    visible = (w > 0).float()
    uniform = visible / visible.sum(dim=-1, keepdim=True).clamp_min(1.0)
    dev = (w - uniform).permute(1, 0, 2, 3).reshape(w.shape[1], -1)  # (H, everything)
    norms = dev.norm(dim=1)
    flat = norms <= 1e-4 * math.sqrt(dev.shape[1])
    pairs = []
    unit = dev / norms.clamp_min(1e-12).unsqueeze(1)
    sim = unit @ unit.T
    for a in range(w.shape[1]):
        for b in range(a + 1, w.shape[1]):
            if not flat[a] and not flat[b] and float(sim[a, b]) > REDUNDANT_COSINE:
                pairs.append((a, b, float(sim[a, b])))
    return pairs, [h for h in range(w.shape[1]) if flat[h]]


def _attention_heatmaps(ctx: CheckContext, maps) -> None:
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


# ---------------------------------------------------------------------------------------------
# attribution
# ---------------------------------------------------------------------------------------------
@register(
    "attribution",
    tier=2,
    summary="captum LayerIntegratedGradients on the input embedding; decoders: no attribution to future tokens",
    needs=("captum>=0.9",),
)
def check_attribution(ctx: CheckContext) -> Iterator[Row]:
    import torch

    try:
        from captum.attr import LayerIntegratedGradients
    except ImportError as err:  # the runner obtains captum first; called directly, say what to do
        yield ctx.row(
            Status.SKIP,
            "attribution",
            None,
            "",
            f"captum is not importable ({err}); install it through the gate with "
            "tbkit.ensure('captum>=0.9') or run the checks with tbkit.run, which does",
        )
        return

    model = ctx.model
    embedding, how_found = find_input_embedding(model)
    if embedding is None:
        yield ctx.row(Status.SKIP, "attribution", None, "", how_found)
        return

    batch, length = ATTR_BATCH, inputs.clamp_len(model, ATTR_LEN)
    ids = inputs.token_ids(model, batch, length, ctx.generator(301), ctx.device)
    mask = torch.ones_like(ids)
    baseline = torch.full_like(ids, int(model.pad_token_id))
    target_pos = length // 2 if length > 1 else 0
    decoder_ids = None
    if model.kind == "seq2seq":
        decoder_ids = inputs.token_ids(model, batch, length, ctx.generator(302), ctx.device)

    with inputs.eval_mode(model.module):
        with torch.no_grad():
            out = model.forward(ids, attention_mask=mask, decoder_input_ids=decoder_ids)
        try:  # integrated gradients need autograd: a model that cannot run in grad mode is the finding
            with torch.enable_grad():
                model.forward(ids, attention_mask=mask, decoder_input_ids=decoder_ids)
        except RuntimeError as err:
            broken = _grad_mode_failure(ctx, err, "integrated gradients")
            if broken is None:
                raise
            yield broken
            return
        # The scalar explained: the output unit the model itself ranks first at the target position
        # (the predicted next token for an LM head, the largest feature for hidden states).
        target_unit = out[:, target_pos].argmax(dim=-1)

        def score(input_ids, attention_mask):
            n = input_ids.shape[0]
            dec = None if decoder_ids is None else decoder_ids.repeat(n // batch, 1)
            o = model.forward(input_ids, attention_mask=attention_mask, decoder_input_ids=dec)
            unit = target_unit.repeat(n // batch)
            return o[torch.arange(n, device=o.device), target_pos, unit]

        lig = LayerIntegratedGradients(score, embedding)
        attempts = []
        for steps in ATTR_STEPS:
            attr, delta = lig.attribute(
                ids, baselines=baseline, additional_forward_args=(mask,), n_steps=steps, return_convergence_delta=True
            )
            with torch.no_grad():
                gap = (score(ids, mask) - score(baseline, mask)).abs()
            rel = float((delta.abs() / gap.clamp_min(1e-6)).max())
            attempts.append((steps, rel))
            if rel <= ATTR_REL_DELTA:
                break

    per_token = attr.float().sum(dim=-1).detach()  # (B, T): one score per input token
    total = per_token.abs().sum(dim=1).clamp_min(1e-30)
    steps, rel = attempts[-1]
    tried = ", ".join(f"{s} steps: {r:.3g}" for s, r in attempts)
    status = Status.PASS if rel <= ATTR_REL_DELTA else Status.WARN
    yield ctx.row(
        status,
        "convergence_delta_rel",
        rel,
        f"<= {ATTR_REL_DELTA}",
        f"LayerIntegratedGradients on {how_found}, baseline all pad tokens ({int(model.pad_token_id)}), "
        f"target: output unit ranked first at position {target_pos} of {length}; relative delta "
        f"|delta| / |F(x) − F(baseline)| ({tried})"
        + (
            ""
            if status is Status.PASS
            else "; the integral has not converged, so per-token scores are "
            "approximate (a very sharp model or a poor baseline)"
        ),
    )

    share_self = float((per_token[:, target_pos].abs() / total).mean())
    top = per_token[0].abs().argsort(descending=True)[:5].tolist()
    own = (
        "source token at the target's index (seq2seq: the decoder input is held fixed)"
        if model.kind == "seq2seq"
        else "target position's own token"
    )
    yield ctx.row(
        Status.PASS,
        "target_token_share",
        round(share_self, 4),
        "info",
        f"share of |attribution| on the {own} (mean over {batch} sequences); "
        f"most attributed positions in sequence 0: {top}",
    )

    if model.kind == "decoder" and target_pos < length - 1:
        after = per_token[:, target_pos + 1 :].abs()
        leak = float((after.sum(dim=1) / total).max())
        where = (after.amax(dim=0) > ATTR_LEAK_TOL * float(total.min())).nonzero().flatten()
        positions = [int(p) + target_pos + 1 for p in where.tolist()]
        if leak > ATTR_LEAK_TOL:
            yield ctx.row(
                Status.FAIL,
                "future_attribution_share",
                leak,
                f"<= {ATTR_LEAK_TOL:g}",
                f"the prediction at position {target_pos} depends on later tokens (positions "
                f"{positions[:10]}): {leak:.3g} of the attribution lies after the target. A decoder must "
                "not see the future: fix the causal mask",
            )
        else:
            yield ctx.row(
                Status.PASS,
                "future_attribution_share",
                leak,
                f"<= {ATTR_LEAK_TOL:g}",
                f"no attribution to the {length - target_pos - 1} tokens after position {target_pos}",
            )


def find_input_embedding(model):
    """(the input nn.Embedding, how it was found) or (None, why not)."""
    import torch

    module = model.module
    getter = getattr(module, "get_input_embeddings", None)
    if callable(getter):
        try:
            emb = getter()
        except (NotImplementedError, AttributeError):
            emb = None
        if isinstance(emb, torch.nn.Module):
            return emb, f"{type(emb).__name__} from get_input_embeddings()"
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.Embedding) and int(m.num_embeddings) == int(model.vocab_size):
            return m, f"the input embedding {name} ({m.num_embeddings}×{m.embedding_dim})"
    return None, (
        f"no input embedding found: the model has no get_input_embeddings() and no nn.Embedding "
        f"with {model.vocab_size} rows (the vocabulary size), so integrated gradients cannot be taken "
        "on token embeddings; expose get_input_embeddings() on the model"
    )


# ---------------------------------------------------------------------------------------------
# robustness
# ---------------------------------------------------------------------------------------------
@register(
    "robustness", tier=2, summary="token substitution at 1/5/10/20 % of positions: KL and top-1 agreement elsewhere"
)
def check_robustness(ctx: CheckContext) -> Iterator[Row]:
    model = ctx.model
    if int(model.vocab_size) < 2:
        yield ctx.row(Status.SKIP, "agreement", None, "", "a vocabulary of one token cannot be substituted")
        return
    batch, length = ROBUST_BATCH, inputs.clamp_len(model, ROBUST_LEN)
    ids = inputs.token_ids(model, batch, length, ctx.generator(401), ctx.device)
    decoder_ids = ids if model.kind == "seq2seq" else None  # seq2seq: only the source is perturbed

    with inputs.eval_mode(model.module):
        clean = inputs.forward(model, ids, decoder_ids=decoder_ids).float()
        logits = inputs.output_is_logits(model, clean)
        curve = []
        for i, p in enumerate(ROBUST_PS):
            k = max(1, round(p * length))
            positions, perturbed = substitute(model, ids, k, ctx.generator(410 + i))
            out = inputs.forward(model, perturbed, decoder_ids=decoder_ids).float()
            keep = _positions_to_compare(model.kind, positions, length, clean.shape[1])
            curve.append((p, k) + _compare(clean, out, keep, logits))

    note = inputs.length_note(model)
    metric = "top1_agreement" if logits else "cosine_similarity"
    for p, k, agree, kl, n in curve:
        if n == 0:
            yield ctx.row(
                Status.SKIP,
                f"{metric}@{p:.0%}",
                None,
                "",
                f"{k} of {length} positions substituted left no position to compare",
            )
            continue
        warn = logits and p == ROBUST_PS[0] and agree < ROBUST_WARN_AGREEMENT
        what = (
            f"KL(clean‖perturbed) {kl:.4g} nats"
            if logits
            else "the output is hidden states, so agreement is the mean cosine similarity of output vectors"
        )
        where = (
            "positions after the first substitution and not substituted (decoder)"
            if model.kind == "decoder"
            else "all decoder positions (source substituted)"
            if model.kind == "seq2seq"
            else "positions not substituted"
        )
        detail = (
            f"{k} of {length} positions per sequence substituted with a different token (seeded); "
            f"{what}; compared at {n} positions: {where}" + (f"; {note}" if note else "")
        )
        if warn:
            detail += (
                "; a 1 % substitution changes most predictions elsewhere: the model is very sensitive to "
                "single tokens (or its outputs are close to ties)"
            )
        yield ctx.row(
            Status.WARN if warn else Status.PASS,
            f"{metric}@{p:.0%}",
            round(agree, 4),
            f">= {ROBUST_WARN_AGREEMENT} at 1 %" if logits else "info",
            detail,
        )
    _robustness_plot(ctx, curve, logits, length)


def substitute(model, ids, k: int, generator):
    """Replace exactly ``k`` positions per row, chosen without repetition, by a different token.

    Returns (positions (B, k) sorted, perturbed ids)."""
    import torch

    batch, length = ids.shape
    k = min(k, length)
    positions = torch.stack([torch.randperm(length, generator=generator)[:k] for _ in range(batch)]).sort(dim=1).values
    positions = positions.to(ids.device)
    replacement = inputs.different_tokens(model, ids, generator)
    perturbed = ids.clone()
    perturbed.scatter_(1, positions, replacement.gather(1, positions))
    return positions, perturbed


def _positions_to_compare(kind: str, positions, length: int, out_len: int):
    """(B, T_out) bool: where clean and perturbed outputs are compared."""
    import torch

    batch = positions.shape[0]
    if kind == "seq2seq":  # the decoder input is unchanged; every decoder position is downstream
        return torch.ones(batch, out_len, dtype=torch.bool, device=positions.device)
    keep = torch.ones(batch, length, dtype=torch.bool, device=positions.device)
    keep.scatter_(1, positions, False)
    if kind == "decoder":  # before the first substitution a causal model cannot change at all
        first = positions.min(dim=1).values.unsqueeze(1)
        keep &= torch.arange(length, device=positions.device).unsqueeze(0) > first
    return keep


def _compare(clean, out, keep, logits: bool):
    """(agreement, mean KL or nan, number of positions compared)."""
    import torch.nn.functional as F

    n = int(keep.sum())
    if n == 0:
        return float("nan"), float("nan"), 0
    a, b = clean[keep], out[keep]  # (n, V) or (n, H)
    if logits:
        agree = float((a.argmax(-1) == b.argmax(-1)).float().mean())
        kl = float(F.kl_div(F.log_softmax(b, -1), F.log_softmax(a, -1), log_target=True, reduction="batchmean"))
        return agree, kl, n
    return float(F.cosine_similarity(a, b, dim=-1).mean()), float("nan"), n


def _robustness_plot(ctx: CheckContext, curve, logits: bool, length: int) -> None:
    from matplotlib.figure import Figure

    # x is the share actually substituted (k of T tokens), which differs from p on short inputs
    pts = [(100.0 * k / length, agree, kl) for _p, k, agree, kl, n in curve if n]
    if not pts:
        return
    fig = Figure(figsize=(5, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    lines = ax.plot(
        [x for x, _, _ in pts],
        [a for _, a, _ in pts],
        "o-",
        color="tab:blue",
        label="top-1 agreement" if logits else "cosine similarity",
    )
    ax.set_xlabel("positions substituted (%)")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("agreement")
    if logits:
        ax2 = ax.twinx()
        lines += ax2.plot([x for x, _, _ in pts], [k for _, _, k in pts], "s--", color="tab:red", label="KL (nats)")
        ax2.set_ylabel("KL clean‖perturbed (nats)")
    ax.set_title(f"degradation under token substitution ({length} tokens)")
    ax.legend(lines, [ln.get_label() for ln in lines], loc="lower left", fontsize=8)
    ctx.save_figure(fig, "degradation")


# ---------------------------------------------------------------------------------------------
# capacity
# ---------------------------------------------------------------------------------------------
@register("capacity", tier=2, summary="effective rank of weight matrices and of per-layer hidden states")
def check_capacity(ctx: CheckContext) -> Iterator[Row]:
    import torch

    model = ctx.model
    weights = []
    for name, p in model.module.named_parameters():
        if p.dim() == 2 and min(p.shape) >= 2:
            er = effective_rank(p.detach())
            weights.append((name, er, er / min(p.shape), tuple(p.shape)))
    if weights:
        low = [w for w in weights if w[2] < ERANK_RATIO_WARN]
        worst = min(weights, key=lambda w: w[2])
        listed = "; ".join(f"{n} {s[0]}×{s[1]}: erank {e:.1f} ({r:.3f})" for n, e, r, s in low[:8])
        if low:
            yield ctx.row(
                Status.WARN,
                "weight_erank_ratio_min",
                round(worst[2], 4),
                f">= {ERANK_RATIO_WARN}",
                f"{len(low)} of {len(weights)} weight matrices use under {ERANK_RATIO_WARN:.0%} of their "
                f"rank (effective rank / min dimension): {listed}. Such matrices behave like much "
                "smaller ones (collapsed or badly initialised)",
            )
        else:
            yield ctx.row(
                Status.PASS,
                "weight_erank_ratio_min",
                round(worst[2], 4),
                f">= {ERANK_RATIO_WARN}",
                f"{len(weights)} weight matrices; lowest effective rank / min dimension is {worst[0]} "
                f"{worst[3][0]}×{worst[3][1]} (erank {worst[1]:.1f})",
            )
    else:
        yield ctx.row(Status.SKIP, "weight_erank_ratio_min", None, "", "the model has no 2-D weight matrices")

    layers, how = _hidden_layers(model.module)
    hidden = []
    if layers:
        batch, length = CAPACITY_BATCH, inputs.clamp_len(model, CAPACITY_LEN)
        ids = inputs.token_ids(model, batch, length, ctx.generator(501), ctx.device)
        captured: dict = {}

        def hook_for(name):
            def hook(module, args, output):
                t = output[0] if isinstance(output, (tuple, list)) else output
                if isinstance(t, torch.Tensor) and t.dim() >= 2 and name not in captured:
                    captured[name] = t.detach().float().reshape(-1, t.shape[-1]).cpu()

            return hook

        handles = [m.register_forward_hook(hook_for(n)) for n, m in layers]
        try:
            with inputs.eval_mode(model.module):
                inputs.forward(model, ids, decoder_ids=ids if model.kind == "seq2seq" else None)
        finally:
            for h in handles:
                h.remove()
        for name, _m in layers:
            if name in captured:
                x = captured[name]
                er = effective_rank(x)
                hidden.append((name, er, er / min(x.shape)))

    if hidden:
        low = [h for h in hidden if h[2] < ERANK_RATIO_WARN]
        first, last = hidden[0], hidden[-1]
        collapsing = len(hidden) >= 2 and last[1] < ERANK_COLLAPSE_RATIO * first[1]
        per_layer = ", ".join(f"{n}: {e:.1f}" for n, e, _ in hidden)
        detail = (
            f"effective rank of the {len(hidden)} per-layer hidden states ({how}), tokens × width "
            f"matrices from {CAPACITY_BATCH}×{inputs.clamp_len(model, CAPACITY_LEN)} inputs: {per_layer}"
        )
        if low or collapsing:
            why = []
            if low:
                why.append(f"{', '.join(n for n, _, _ in low)} below {ERANK_RATIO_WARN:.0%} of the possible rank")
            if collapsing:
                why.append(
                    f"rank falls from {first[1]:.1f} to {last[1]:.1f} with depth (toward 1: every token "
                    "gets the same representation — rank collapse)"
                )
            yield ctx.row(
                Status.WARN,
                "hidden_erank_ratio_min",
                round(min(h[2] for h in hidden), 4),
                f">= {ERANK_RATIO_WARN}; last >= {ERANK_COLLAPSE_RATIO}·first",
                f"{detail}; {'; '.join(why)}",
            )
        else:
            yield ctx.row(
                Status.PASS,
                "hidden_erank_ratio_min",
                round(min(h[2] for h in hidden), 4),
                f">= {ERANK_RATIO_WARN}; last >= {ERANK_COLLAPSE_RATIO}·first",
                detail,
            )
    else:
        yield ctx.row(
            Status.SKIP,
            "hidden_erank_ratio_min",
            None,
            "",
            how or "no per-layer hidden states were produced by the layers found",
        )
    _capacity_plot(ctx, weights, hidden)


def effective_rank(matrix) -> float:
    """exp(entropy of the normalised singular values) (Roy & Vetterli 2007): 1 for rank one,
    min(shape) for a matrix whose singular values are all equal."""
    import torch

    m = matrix.detach().float().cpu()  # float64 below: not on every accelerator (MPS has none)
    if max(m.shape) > 4096:  # e.g. a 50k-row embedding: singular values from the small Gram matrix
        g = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
        s = torch.linalg.eigvalsh(g.double()).clamp_min(0).sqrt()
    else:
        s = torch.linalg.svdvals(m.double())
    total = float(s.sum())
    if not math.isfinite(total) or total <= 0:
        return 0.0 if total == 0 else float("nan")
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def _hidden_layers(root):
    """[(name, module)] whose outputs are the per-layer hidden states, and how they were chosen.

    Preference: the blocks of a ModuleList/Sequential of repeated same-type modules (nn.Transformer*
    stacks, GPT-style ``blocks``); else, for exports that lay layers out flat (``layernorm_0`` …),
    the normalisation layers in order, which sit between every sub-layer."""
    import torch

    stacks = []
    for name, m in root.named_modules():
        if isinstance(m, (torch.nn.ModuleList, torch.nn.Sequential)) and len(m) >= 2:
            kids = list(m.named_children())
            kinds = {type(c) for _, c in kids}
            if len(kinds) == 1 and any(True for _ in kids[0][1].parameters()) and len(list(kids[0][1].children())) >= 2:
                stacks.append([(f"{name}.{n}" if name else n, c) for n, c in kids])
    if stacks:
        # Nested repeated stacks (a block holding a ModuleList of heads) would double-count: keep
        # only the outermost ones.
        names = [s[0][0].rsplit(".", 1)[0] for s in stacks]
        outer = [s for s, n in zip(stacks, names) if not any(n != o and n.startswith(o + ".") for o in names)]
        layers = [item for s in outer for item in s]
        return layers, f"outputs of the repeated blocks {', '.join(sorted(set(names)))}"
    norms = [
        (n, m)
        for n, m in root.named_modules()
        if isinstance(m, torch.nn.LayerNorm) or type(m).__name__.lower().endswith(("rmsnorm", "layernorm"))
    ]
    if len(norms) >= 2:
        return norms, "outputs of the normalisation layers in order (no repeated block list was found)"
    return [], (
        "no per-layer hidden states found: no list of repeated blocks and fewer than two normalisation layers to hook"
    )


def _capacity_plot(ctx: CheckContext, weights, hidden) -> None:
    from matplotlib.figure import Figure

    if not weights and not hidden:
        return
    fig = Figure(figsize=(9, 3.4))
    if weights:
        ax = fig.add_subplot(1, 2, 1)
        ax.hist([r for _, _, r, _ in weights], bins=20, range=(0, 1), color="tab:blue")
        ax.axvline(ERANK_RATIO_WARN, color="tab:red", ls="--")
        ax.set_xlabel("effective rank / min dimension")
        ax.set_ylabel("weight matrices")
        ax.set_title("weights")
    if hidden:
        ax = fig.add_subplot(1, 2, 2)
        ax.plot(range(len(hidden)), [e for _, e, _ in hidden], "o-")
        ax.set_xticks(range(len(hidden)))
        ax.set_xticklabels([n for n, _, _ in hidden], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("effective rank")
        ax.set_title("hidden states by depth")
    ctx.save_figure(fig, "effective_rank")


def _fmt_list(values, digits: int = 2) -> str:
    return "[" + ", ".join(f"{v:.{digits}f}" for v in values) + "]"
