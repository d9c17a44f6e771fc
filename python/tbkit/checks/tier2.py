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
from tbkit.checks.numeric import kind_guess_note

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
    thresholds={
        "future_mass": FUTURE_MASS_TOL,
        "redundant_cosine": REDUNDANT_COSINE,
        "capture_fidelity": CAPTURE_FIDELITY,
    },
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
    from tbkit.checks import attention_capture

    model = ctx.model
    ids, decoder_ids, lengths, self_len = _attention_inputs(ctx)
    with inputs.eval_mode(model.module):
        try:
            run = lambda: model.forward(ids, decoder_input_ids=decoder_ids)  # noqa: E731
            result = attention_capture.capture(run, model.module, ATTN_BATCH, lengths)
        except RuntimeError as err:
            broken = _grad_mode_failure(ctx, err, "its attention weights")
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


def _attention_inputs(ctx: CheckContext) -> tuple:
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


def _attention_fidelity(ctx: CheckContext, result, length: int) -> Row:
    change = result.max_output_change
    scale = max(1.0, float(result.output_without_capture.float().abs().max()))
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


def _attention_future_mass(ctx: CheckContext, stats: list, self_len: int) -> Row:
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


def _attention_entropy(ctx: CheckContext, stats: list) -> Iterator[Row]:
    """Entropy and sparsity: information rows, one per captured map."""
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


def _attention_redundancy(ctx: CheckContext, stats: list, maps: list) -> Row:
    """Redundant heads, compared on their departure from uniform attention: untrained heads are all
    near-uniform, and raw maps would then look "redundant" for every freshly built model."""
    cosine = ctx.threshold("redundant_cosine")
    pairs, uniform = [], []
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


def _redundant_pairs(w, cosine: float = REDUNDANT_COSINE):
    """Head pairs whose maps' departure from uniform attention has cosine > ``cosine``."""
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
            if not flat[a] and not flat[b] and float(sim[a, b]) > cosine:
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
    thresholds={"rel_delta": ATTR_REL_DELTA, "future_share": ATTR_LEAK_TOL},
)
def check_attribution(ctx: CheckContext) -> Iterator[Row]:
    """captum ``LayerIntegratedGradients`` on the input embedding (plain IG on token ids cannot
    work), baseline all pad tokens, target: the output unit the model ranks first at the middle
    position; 50 steps, retried at 200 when the integral has not converged. Runs on the model
    itself inside ``restore.preserved``.

    Why: which tokens a prediction rests on; for decoders, any attribution to a later token is a
    causal leak measured through the gradients. Thresholds: relative convergence delta
    |delta| / |F(x) - F(baseline)| > ``rel_delta`` (0.05) WARN; decoders: share of |attribution|
    after the target > ``future_share`` (1e-6) FAIL (the row says when the kind was inferred).
    Fix: the causal mask; a better baseline when the delta stays high."""
    try:
        from captum.attr import LayerIntegratedGradients  # noqa: F401
    except ImportError as err:  # the runner obtains captum first; called directly, say what to do
        why = (
            f"captum is not importable ({err}); install it through the gate with tbkit.ensure('captum>=0.9') or "
            "run the checks with tbkit.run, which does"
        )
        yield ctx.row(Status.SKIP, "attribution", None, "", why)
        return
    from tbkit.checks.restore import preserved

    embedding, how_found = find_input_embedding(ctx.model)
    if embedding is None:
        yield ctx.row(Status.SKIP, "attribution", None, "", how_found)
        return
    setup = _attribution_setup(ctx)
    with preserved(ctx.model.module), inputs.eval_mode(ctx.model.module):
        broken = _attribution_grad_failure(ctx, setup)
        if broken is None:
            attr, attempts = _integrate(ctx, setup, embedding)
    if broken is not None:
        yield broken
        return
    per_token = attr.float().sum(dim=-1).detach()  # (B, T): one score per input token
    total = per_token.abs().sum(dim=1).clamp_min(1e-30)
    yield _attribution_convergence(ctx, setup, attempts, how_found)
    yield _attribution_target_share(ctx, setup, per_token, total)
    if ctx.model.kind == "decoder" and setup["target_pos"] < setup["length"] - 1:
        yield _attribution_future(ctx, setup, per_token, total)


def _attribution_setup(ctx: CheckContext) -> dict:
    import torch

    model = ctx.model
    length = inputs.clamp_len(model, ATTR_LEN)
    ids = inputs.token_ids(model, ATTR_BATCH, length, ctx.generator(301), ctx.device)
    decoder_ids = None
    if model.kind == "seq2seq":
        decoder_ids = inputs.token_ids(model, ATTR_BATCH, length, ctx.generator(302), ctx.device)
    return dict(
        ids=ids,
        mask=torch.ones_like(ids),
        baseline=torch.full_like(ids, int(model.pad_token_id)),
        length=length,
        target_pos=length // 2 if length > 1 else 0,
        decoder_ids=decoder_ids,
    )


def _attribution_grad_failure(ctx: CheckContext, setup: dict):
    """Integrated gradients need autograd: a model that cannot run in grad mode is the finding."""
    import torch

    try:
        with torch.enable_grad():
            ctx.model.forward(setup["ids"], attention_mask=setup["mask"], decoder_input_ids=setup["decoder_ids"])
    except RuntimeError as err:
        broken = _grad_mode_failure(ctx, err, "integrated gradients")
        if broken is None:
            raise
        return broken
    return None


def _integrate(ctx: CheckContext, setup: dict, embedding) -> tuple:
    """(attributions, [(steps, relative delta), ...]): 50 steps, then 200 if not converged."""
    import torch
    from captum.attr import LayerIntegratedGradients

    model, batch, target_pos = ctx.model, ATTR_BATCH, setup["target_pos"]
    ids, mask, baseline, decoder_ids = setup["ids"], setup["mask"], setup["baseline"], setup["decoder_ids"]
    with torch.no_grad():
        out = model.forward(ids, attention_mask=mask, decoder_input_ids=decoder_ids)
    # The scalar explained: the output unit the model itself ranks first at the target position
    # (the predicted next token for an LM head, the largest feature for hidden states).
    target_unit = out[:, target_pos].argmax(dim=-1)

    def score(input_ids, attention_mask):
        n = input_ids.shape[0]
        dec = None if decoder_ids is None else decoder_ids.repeat(n // batch, 1)
        o = model.forward(input_ids, attention_mask=attention_mask, decoder_input_ids=dec)
        return o[torch.arange(n, device=o.device), target_pos, target_unit.repeat(n // batch)]

    lig = LayerIntegratedGradients(score, embedding)
    attempts = []
    for steps in ATTR_STEPS:
        attr, delta = lig.attribute(
            ids, baselines=baseline, additional_forward_args=(mask,), n_steps=steps, return_convergence_delta=True
        )
        with torch.no_grad():
            gap = (score(ids, mask) - score(baseline, mask)).abs()
        attempts.append((steps, float((delta.abs() / gap.clamp_min(1e-6)).max())))
        if attempts[-1][1] <= ctx.threshold("rel_delta"):
            break
    return attr, attempts


def _attribution_convergence(ctx: CheckContext, setup: dict, attempts: list, how_found: str) -> Row:
    limit = ctx.threshold("rel_delta")
    steps, rel = attempts[-1]
    tried = ", ".join(f"{s} steps: {r:.3g}" for s, r in attempts)
    status = Status.PASS if rel <= limit else Status.WARN
    detail = (
        f"LayerIntegratedGradients on {how_found}, baseline all pad tokens ({int(ctx.model.pad_token_id)}), "
        f"target: output unit ranked first at position {setup['target_pos']} of {setup['length']}; relative delta "
        f"|delta| / |F(x) − F(baseline)| ({tried})"
    )
    if status is not Status.PASS:
        detail += "; the integral has not converged, so per-token scores are approximate (a very sharp model or a poor baseline)"
    return ctx.row(status, "convergence_delta_rel", rel, f"<= {limit}", detail)


def _attribution_target_share(ctx: CheckContext, setup: dict, per_token, total) -> Row:
    share_self = float((per_token[:, setup["target_pos"]].abs() / total).mean())
    top = per_token[0].abs().argsort(descending=True)[:5].tolist()
    own = (
        "source token at the target's index (seq2seq: the decoder input is held fixed)"
        if ctx.model.kind == "seq2seq"
        else "target position's own token"
    )
    detail = (
        f"share of |attribution| on the {own} (mean over {ATTR_BATCH} sequences); most attributed positions in "
        f"sequence 0: {top}"
    )
    return ctx.row(Status.PASS, "target_token_share", round(share_self, 4), "info", detail)


def _attribution_future(ctx: CheckContext, setup: dict, per_token, total) -> Row:
    tol, target_pos, length = ctx.threshold("future_share"), setup["target_pos"], setup["length"]
    after = per_token[:, target_pos + 1 :].abs()
    leak = float((after.sum(dim=1) / total).max())
    if leak <= tol:
        detail = f"no attribution to the {length - target_pos - 1} tokens after position {target_pos}"
        return ctx.row(Status.PASS, "future_attribution_share", leak, f"<= {tol:g}", detail)
    where = (after.amax(dim=0) > tol * float(total.min())).nonzero().flatten()
    positions = [int(p) + target_pos + 1 for p in where.tolist()]
    detail = (
        f"the prediction at position {target_pos} depends on later tokens (positions {positions[:10]}): "
        f"{leak:.3g} of the attribution lies after the target. A decoder must not see the future: fix the causal "
        "mask" + kind_guess_note(ctx.model)
    )
    return ctx.row(Status.FAIL, "future_attribution_share", leak, f"<= {tol:g}", detail)


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
    "robustness",
    tier=2,
    summary="token substitution at 1/5/10/20 % of positions: KL and top-1 agreement elsewhere",
    thresholds={"min_agreement_at_1pct": ROBUST_WARN_AGREEMENT},
)
def check_robustness(ctx: CheckContext) -> Iterator[Row]:
    """Substitute 1, 5, 10 and 20 % of the tokens (seeded) and compare the outputs at the positions
    that were not substituted (decoders: only after the first substitution): top-1 agreement and
    KL for logits, cosine similarity for hidden states; a degradation curve.

    Why: a model whose predictions everywhere flip when one token in a hundred changes is fragile
    or close to ties. Thresholds: top-1 agreement at 1 % below ``min_agreement_at_1pct`` (0.5) WARN;
    the rest is information. Fix: more or noisier training data; check the output scale."""
    model = ctx.model
    if int(model.vocab_size) < 2:
        yield ctx.row(Status.SKIP, "agreement", None, "", "a vocabulary of one token cannot be substituted")
        return
    length = inputs.clamp_len(model, ROBUST_LEN)
    curve, logits = _robustness_curve(ctx, length)
    for point in curve:
        yield _robustness_row(ctx, point, logits, length)
    _robustness_plot(ctx, curve, logits, length)


def _robustness_curve(ctx: CheckContext, length: int) -> tuple:
    """([(p, k, agreement, kl, positions compared), ...], output is logits)."""
    model = ctx.model
    ids = inputs.token_ids(model, ROBUST_BATCH, length, ctx.generator(401), ctx.device)
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
    return curve, logits


def _robustness_row(ctx: CheckContext, point: tuple, logits: bool, length: int) -> Row:
    model, (p, k, agree, kl, n) = ctx.model, point
    metric = f"{'top1_agreement' if logits else 'cosine_similarity'}@{p:.0%}"
    if n == 0:
        return ctx.row(
            Status.SKIP, metric, None, "", f"{k} of {length} positions substituted left no position to compare"
        )
    limit = ctx.threshold("min_agreement_at_1pct")
    warn = logits and p == ROBUST_PS[0] and agree < limit
    what = (
        f"KL(clean‖perturbed) {kl:.4g} nats"
        if logits
        else "the output is hidden states, so agreement is the mean cosine similarity of output vectors"
    )
    where = {
        "decoder": "positions after the first substitution and not substituted (decoder)",
        "seq2seq": "all decoder positions (source substituted)",
    }.get(model.kind, "positions not substituted")
    note = inputs.length_note(model)
    detail = (
        f"{k} of {length} positions per sequence substituted with a different token (seeded); "
        f"{what}; compared at {n} positions: {where}" + (f"; {note}" if note else "")
    )
    if warn:
        detail += (
            "; a 1 % substitution changes most predictions elsewhere: the model is very sensitive to "
            "single tokens (or its outputs are close to ties)"
        )
    status = Status.WARN if warn else Status.PASS
    return ctx.row(status, metric, round(agree, 4), f">= {limit} at 1 %" if logits else "info", detail)


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
@register(
    "capacity",
    tier=2,
    summary="effective rank of weight matrices and of per-layer hidden states",
    thresholds={"min_erank_ratio": ERANK_RATIO_WARN, "collapse_ratio": ERANK_COLLAPSE_RATIO},
)
def check_capacity(ctx: CheckContext) -> Iterator[Row]:
    """Effective rank (exp of the spectral entropy) of every weight matrix and of each layer's
    hidden states (tokens x width), relative to the largest possible rank.

    Why: a matrix or layer that uses a small part of its rank behaves like a much smaller one;
    hidden-state rank falling toward 1 with depth is rank collapse (every token gets the same
    representation). Thresholds: erank / min dimension < ``min_erank_ratio`` (0.1) WARN; deepest
    layer's erank < ``collapse_ratio`` (0.25) x the first layer's WARN. Fix: the init, residual
    connections and normalisation."""
    weights = _weight_ranks(ctx.model)
    yield _capacity_weights_row(ctx, weights)
    hidden, how = _hidden_ranks(ctx)
    yield _capacity_hidden_row(ctx, hidden, how)
    _capacity_plot(ctx, weights, hidden)


def _weight_ranks(model) -> list:
    weights = []
    for name, p in model.module.named_parameters():
        if p.dim() == 2 and min(p.shape) >= 2:
            er = effective_rank(p.detach())
            weights.append((name, er, er / min(p.shape), tuple(p.shape)))
    return weights


def _capacity_weights_row(ctx: CheckContext, weights: list) -> Row:
    limit = ctx.threshold("min_erank_ratio")
    if not weights:
        return ctx.row(Status.SKIP, "weight_erank_ratio_min", None, "", "the model has no 2-D weight matrices")
    low = [w for w in weights if w[2] < limit]
    worst = min(weights, key=lambda w: w[2])
    if low:
        listed = "; ".join(f"{n} {s[0]}×{s[1]}: erank {e:.1f} ({r:.3f})" for n, e, r, s in low[:8])
        why = (
            f"{len(low)} of {len(weights)} weight matrices use under {limit:.0%} of their rank (effective rank / "
            f"min dimension): {listed}. Such matrices behave like much smaller ones (collapsed or badly initialised)"
        )
        return ctx.row(Status.WARN, "weight_erank_ratio_min", round(worst[2], 4), f">= {limit}", why)
    why = (
        f"{len(weights)} weight matrices; lowest effective rank / min dimension is {worst[0]} "
        f"{worst[3][0]}×{worst[3][1]} (erank {worst[1]:.1f})"
    )
    return ctx.row(Status.PASS, "weight_erank_ratio_min", round(worst[2], 4), f">= {limit}", why)


def _hidden_ranks(ctx: CheckContext) -> tuple:
    """([(layer name, erank, erank / min dim), ...], how the layers were found)."""
    import torch

    model = ctx.model
    layers, how = _hidden_layers(model.module)
    if not layers:
        return [], how
    ids = inputs.token_ids(model, CAPACITY_BATCH, inputs.clamp_len(model, CAPACITY_LEN), ctx.generator(501), ctx.device)
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
    hidden = []
    for name, _m in layers:
        if name in captured:
            er = effective_rank(captured[name])
            hidden.append((name, er, er / min(captured[name].shape)))
    return hidden, how


def _capacity_hidden_row(ctx: CheckContext, hidden: list, how: str) -> Row:
    if not hidden:
        why = how or "no per-layer hidden states were produced by the layers found"
        return ctx.row(Status.SKIP, "hidden_erank_ratio_min", None, "", why)
    limit, collapse = ctx.threshold("min_erank_ratio"), ctx.threshold("collapse_ratio")
    low = [h for h in hidden if h[2] < limit]
    first, last = hidden[0], hidden[-1]
    collapsing = len(hidden) >= 2 and last[1] < collapse * first[1]
    per_layer = ", ".join(f"{n}: {e:.1f}" for n, e, _ in hidden)
    detail = (
        f"effective rank of the {len(hidden)} per-layer hidden states ({how}), tokens × width "
        f"matrices from {CAPACITY_BATCH}×{inputs.clamp_len(ctx.model, CAPACITY_LEN)} inputs: {per_layer}"
    )
    why = []
    if low:
        why.append(f"{', '.join(n for n, _, _ in low)} below {limit:.0%} of the possible rank")
    if collapsing:
        why.append(
            f"rank falls from {first[1]:.1f} to {last[1]:.1f} with depth (toward 1: every token gets the same "
            "representation — rank collapse)"
        )
    status = Status.WARN if why else Status.PASS
    value, threshold = round(min(h[2] for h in hidden), 4), f">= {limit}; last >= {collapse}·first"
    return ctx.row(status, "hidden_erank_ratio_min", value, threshold, detail + (f"; {'; '.join(why)}" if why else ""))


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
