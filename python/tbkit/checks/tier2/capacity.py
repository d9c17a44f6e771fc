"""The ``capacity`` check (Tier 2)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from tbkit.checks import inputs
from tbkit.checks.base import CheckContext, Row, Status, register
from tbkit.checks.effective_rank import effective_rank, effective_ranks
from tbkit.checks.spec import Threshold

if TYPE_CHECKING:  # torch is imported lazily; these are annotations only
    import torch
    from torch import nn

    from tbkit.sources.loaded import LoadedModel

__all__ = ["check_capacity", "effective_rank"]

CAPACITY_BATCH, CAPACITY_LEN = 4, 64


ERANK_RATIO_WARN = 0.1


ERANK_COLLAPSE_RATIO = 0.25  # deepest layer's erank below this share of the first layer's

WeightRank = tuple[str, float, float, tuple[int, ...]]  # name, erank, erank / min dimension, shape
HiddenRank = tuple[str, float, float]  # layer name, erank, erank / min dimension
Layers = list[tuple[str, "nn.Module"]]


@register(
    "capacity",
    tier=2,
    summary="effective rank of weight matrices and of per-layer hidden states",
    thresholds=(
        Threshold("min_erank_ratio", float, ERANK_RATIO_WARN, "share", "erank / min dimension below it WARN"),
        Threshold(
            "collapse_ratio", float, ERANK_COLLAPSE_RATIO, "share", "deepest layer's erank / first's below it WARN"
        ),
    ),
)
def check_capacity(ctx: CheckContext) -> Iterator[Row]:
    """Effective rank (exp of the spectral entropy) of every weight matrix and of each layer's
    hidden states (tokens x width), relative to the largest possible rank.

    Why: a matrix or layer that uses a small part of its rank behaves like a much smaller one;
    hidden-state rank falling toward 1 with depth is rank collapse (every token gets the same
    representation). Thresholds: erank / min dimension < ``min_erank_ratio`` (0.1) WARN; deepest
    layer's erank < ``collapse_ratio`` (0.25) x the first layer's WARN. Fix: the init, residual
    connections and normalisation."""
    weights = _weight_ranks(ctx.model, ctx.device)
    yield _capacity_weights_row(ctx, weights)
    hidden, how = _hidden_ranks(ctx)
    yield _capacity_hidden_row(ctx, hidden, how)
    _capacity_plot(ctx, weights, hidden)


def _weight_ranks(model: LoadedModel, device: torch.device) -> list[WeightRank]:
    """[(name, erank, erank / min dimension, shape)] of every 2-D weight, computed in batches on
    the model's device (checks/effective_rank.py says why float32 is accurate enough)."""
    named = [(n, p.detach()) for n, p in model.module.named_parameters() if p.dim() == 2 and min(p.shape) >= 2]
    ranks = effective_ranks([p for _, p in named], device)
    return [(n, er, er / min(p.shape), tuple(p.shape)) for (n, p), er in zip(named, ranks)]


def _capacity_weights_row(ctx: CheckContext, weights: list[WeightRank]) -> Row:
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


def _hidden_ranks(ctx: CheckContext) -> tuple[list[HiddenRank], str]:
    """([(layer name, erank, erank / min dim), ...], how the layers were found)."""
    import torch

    model = ctx.model
    layers, how = _hidden_layers(model.module)
    if not layers:
        return [], how
    ids = inputs.token_ids(model, CAPACITY_BATCH, inputs.clamp_len(model, CAPACITY_LEN), ctx.generator(501), ctx.device)
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            t = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and name not in captured:
                captured[name] = t.detach().float().reshape(-1, t.shape[-1])

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in layers]
    try:
        with inputs.eval_mode(model.module):
            inputs.forward(model, ids, decoder_ids=ids if model.kind == "seq2seq" else None)
    finally:
        for h in handles:
            h.remove()
    names = [name for name, _m in layers if name in captured]
    ranks = effective_ranks([captured[n] for n in names], ctx.device)
    return [(n, er, er / min(captured[n].shape)) for n, er in zip(names, ranks)], how


def _capacity_hidden_row(ctx: CheckContext, hidden: list[HiddenRank], how: str) -> Row:
    if not hidden:
        reason = how or "no per-layer hidden states were produced by the layers found"
        return ctx.row(Status.SKIP, "hidden_erank_ratio_min", None, "", reason)
    limit, collapse = ctx.threshold("min_erank_ratio"), ctx.threshold("collapse_ratio")
    low = [h for h in hidden if h[2] < limit]
    first, last = hidden[0], hidden[-1]
    collapsing = len(hidden) >= 2 and last[1] < collapse * first[1]
    per_layer = ", ".join(f"{n}: {e:.1f}" for n, e, _ in hidden)
    detail = (
        f"effective rank of the {len(hidden)} per-layer hidden states ({how}), tokens × width "
        f"matrices from {CAPACITY_BATCH}×{inputs.clamp_len(ctx.model, CAPACITY_LEN)} inputs: {per_layer}"
    )
    why: list[str] = []
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


def _hidden_layers(root: nn.Module) -> tuple[Layers, str]:
    """[(name, module)] whose outputs are the per-layer hidden states, and how they were chosen.

    Preference: the blocks of a ModuleList/Sequential of repeated same-type modules (nn.Transformer*
    stacks, GPT-style ``blocks``); else, for exports that lay layers out flat (``layernorm_0`` …),
    the normalisation layers in order, which sit between every sub-layer."""
    import torch

    stacks: list[Layers] = []
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


def _capacity_plot(ctx: CheckContext, weights: list[WeightRank], hidden: list[HiddenRank]) -> None:
    from matplotlib.figure import Figure

    if not weights and not hidden:
        return
    fig = Figure(figsize=(9, 3.4))
    if weights:
        ax = fig.add_subplot(1, 2, 1)
        ax.hist([r for _, _, r, _ in weights], bins=20, range=(0, 1), color="tab:blue")
        ax.axvline(ctx.threshold("min_erank_ratio"), color="tab:red", ls="--")  # the limit in force
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
