"""The ``robustness`` check (Tier 2)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from tbkit.checks import inputs
from tbkit.checks.base import CheckContext, Row, Status, register
from tbkit.checks.spec import Threshold

if TYPE_CHECKING:  # torch is imported lazily; these are annotations only
    import torch

    from tbkit.sources.loaded import LoadedModel

ROBUST_BATCH, ROBUST_LEN = 4, 100  # 100 positions: 1 % is exactly one token per row


ROBUST_PS = (0.01, 0.05, 0.10, 0.20)


ROBUST_WARN_AGREEMENT = 0.5

# one point of the degradation curve: (p, k, agreement, KL or nan, positions compared)
CurvePoint = tuple[float, int, float, float, int]


@register(
    "robustness",
    tier=2,
    summary="token substitution at 1/5/10/20 % of positions: KL and top-1 agreement elsewhere",
    thresholds=(
        Threshold(
            "min_agreement_at_1pct", float, ROBUST_WARN_AGREEMENT, "share", "top-1 agreement at 1 % below it WARN"
        ),
    ),
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


def _robustness_curve(ctx: CheckContext, length: int) -> tuple[list[CurvePoint], bool]:
    """([(p, k, agreement, kl, positions compared), ...], output is logits)."""
    model = ctx.model
    ids = inputs.token_ids(model, ROBUST_BATCH, length, ctx.generator(401), ctx.device)
    decoder_ids = ids if model.kind == "seq2seq" else None  # seq2seq: only the source is perturbed
    with inputs.eval_mode(model.module):
        clean = inputs.forward(model, ids, decoder_ids=decoder_ids).float()
        logits = inputs.output_is_logits(model, clean)
        curve: list[CurvePoint] = []
        for i, p in enumerate(ROBUST_PS):
            k = max(1, round(p * length))
            positions, perturbed = substitute(model, ids, k, ctx.generator(410 + i))
            out = inputs.forward(model, perturbed, decoder_ids=decoder_ids).float()
            keep = _positions_to_compare(model.kind, positions, length, clean.shape[1])
            curve.append((p, k) + _compare(clean, out, keep, logits))
    return curve, logits


def _robustness_row(ctx: CheckContext, point: CurvePoint, logits: bool, length: int) -> Row:
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


def substitute(
    model: LoadedModel, ids: torch.Tensor, k: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
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


def _positions_to_compare(kind: str, positions: torch.Tensor, length: int, out_len: int) -> torch.Tensor:
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


def _compare(clean: torch.Tensor, out: torch.Tensor, keep: torch.Tensor, logits: bool) -> tuple[float, float, int]:
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


def _robustness_plot(ctx: CheckContext, curve: list[CurvePoint], logits: bool, length: int) -> None:
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
    ax.legend(lines, [str(ln.get_label()) for ln in lines], loc="lower left", fontsize=8)
    ctx.save_figure(fig, "degradation")
