"""The ``gradient_flow`` check (Tier 1)."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from tbkit.checks import inputs as inp
from tbkit.checks import shared
from tbkit.checks.base import CheckContext, Row, register
from tbkit.checks.numeric import (
    describe_error,
    fmt,
    log_scale,
    new_figure,
    read_back,
)
from tbkit.checks.restore import preserved
from tbkit.checks.spec import Threshold
from tbkit.checks.tier1.common import FAIL, PASS, WARN, forward_pair
from tbkit.devices import seed_forked

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure
    from torch import nn


def _layer_key(name: str) -> str:
    """Group a parameter into its layer: up to the first numeric path component
    ("blocks.3.attn.in_proj_weight" -> "blocks.3"), else its top-level module ("head.weight" -> "head")."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return parts[0] if len(parts) > 1 else "(root)"


def _owner(name: str) -> str:
    """The qualified name of the module holding parameter ``name`` ("" for the root)."""
    return name.rsplit(".", 1)[0] if "." in name else ""


@register(
    "gradient_flow",
    tier=1,
    summary="one backward on an LM loss (model restored after): every parameter reached, finite, moved by a step",
    thresholds=(
        Threshold("max_total_norm", float, 1e3, "", "total gradient norm above it WARN"),
        Threshold("min_layer_ratio", float, 1e-4, "", "a layer's gradient norm below this share of the largest WARN"),
        Threshold("lr", float, 1e-3, "", "learning rate of the one Adam step every parameter must move by"),
    ),
)
def check_gradient_flow(ctx: CheckContext) -> Iterator[Row]:
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


def _backward_and_step(ctx: CheckContext) -> dict[str, Any]:
    """Inside ``preserved``: the backward, the facts about each gradient, then one Adam step."""
    import torch

    lm, dev = ctx.model, ctx.device
    module = lm.module
    for p in module.parameters():
        p.grad = None  # the user's own accumulated gradients must not be counted (restored after)
    module.train()  # training is the point here: the same path (dropout on) a real step takes
    ran: set[str] = set()
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: ran.add(n)) for n, m in module.named_modules()]
    gen = ctx.generator(8)
    ids = inp.token_ids(lm, 2, shared.probe_length(ctx), gen, dev)
    enc, dec = forward_pair(lm, ids, dev, gen)
    try:
        seed_forked(ctx.seed, dev)
        with torch.enable_grad():
            out = lm.forward(enc, decoder_input_ids=dec)
            loss, what = inp.lm_loss(lm, ids, out, gen)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
    except Exception as err:  # the model failing in training mode is the finding
        return {"error": describe_error(err)}
    finally:
        for h in hooks:
            h.remove()
    facts = _gradient_facts(module, ran)
    facts.update(loss=float(loss.detach()), what=what)
    facts.update(_adam_step(ctx, facts["with_grad"], set(facts["zero"])))
    return facts


def _gradient_facts(module: nn.Module, ran: set[str]) -> dict[str, Any]:
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    no_grad = [n for n, p in trainable if p.grad is None]
    with_grad = [(n, p) for n, p in trainable if p.grad is not None]
    # one pass over the gradients: a norm is non-finite exactly when the tensor holds NaN/Inf,
    # and zero exactly when every entry is zero
    # (grad is not None here); read back together: one wait for the device, not one per parameter
    values = read_back([cast("torch.Tensor", p.grad).float().norm() for _, p in with_grad])
    norms = {n: v for (n, _), v in zip(with_grad, values)}
    return dict(
        trainable=len(trainable),
        no_grad=no_grad,
        never_ran=[n for n in no_grad if _owner(n) not in ran],
        elsewhere=[n for n in no_grad if _owner(n) in ran],
        with_grad=with_grad,
        nonfinite=[n for n, v in norms.items() if not math.isfinite(v)],
        zero=[n for n, v in norms.items() if v == 0],
        norms=norms,
    )


def _adam_step(ctx: CheckContext, with_grad: list[tuple[str, nn.Parameter]], zero: set[str]) -> dict[str, Any]:
    """Which parameters one Adam step moves. Adam's first step (bias-corrected) is exactly
    p - lr * g / (|g| + eps), so it is computed out of place: the same answer as
    ``torch.optim.Adam(...).step()`` without allocating its state or writing the weights."""
    import torch

    lr, eps = ctx.threshold("lr"), 1e-8
    moved = 0
    unchanged: list[str] = []
    with torch.no_grad():
        for n, p in with_grad:
            if n in zero:
                continue  # a zero gradient moves nothing (the all-zero row names it)
            g = cast("torch.Tensor", p.grad)  # with_grad holds only parameters with a gradient
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


def _gradient_connectivity(ctx: CheckContext, f: dict[str, Any]) -> Iterator[Row]:
    metric = "parameters without gradient"
    if f["never_ran"]:
        yield from _never_ran(ctx, f, metric)
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


def _never_ran(ctx: CheckContext, f: dict[str, Any], metric: str) -> Iterator[Row]:
    """Parameters whose modules never ran: WARN when an optional input of forward reaches them (or
    might: one tbkit cannot build), FAIL when no input of the signature can."""
    from tbkit.checks.tier1.reachable import reached_by

    reached, untried = reached_by(ctx, {_owner(n) for n in f["never_ran"]})
    dead = [n for n in f["never_ran"] if _owner(n) not in reached]
    optional = [n for n in f["never_ran"] if _owner(n) in reached]
    if optional:
        inputs = sorted({reached[_owner(n)] for n in optional})
        why = (
            f"{len(optional)} tensors run only under optional inputs ({'; '.join(inputs)}), which this check does "
            f"not give: {_names(optional)}. They train when those inputs are given"
        )
        yield ctx.row(WARN, "parameters reached only by optional inputs", len(optional), "0", why)
    if not dead:
        return
    if untried:
        why = (
            f"{_names(dead)}: their modules did not run under the inputs tbkit gives; forward also takes "
            f"{', '.join(untried)} (not synthesised here), which may reach them. If none does, they never train"
        )
        yield ctx.row(WARN, metric, len(dead), "0", why)
        return
    why = (
        f"disconnected: {_names(dead)} — their modules never run in forward, under any input its signature "
        "takes, so they never train. Use them in forward or delete them"
    )
    yield ctx.row(FAIL, metric, len(dead), "0", why)


def _names(names: list[str]) -> str:
    return ", ".join(names[:20]) + (" …" if len(names) > 20 else "")


def _gradient_zero(ctx: CheckContext, f: dict[str, Any]) -> Iterator[Row]:
    zero = f["zero"]
    detail = (
        "gradient exactly zero for: " + ", ".join(zero[:20]) + " (dead units, a zero multiplier, or a detached branch)"
        if zero
        else "every reached tensor has a non-zero gradient (embedding rows of tokens absent from the batch are zero "
        "by nature and not counted)"
    )
    yield ctx.row(WARN if zero else PASS, "all-zero gradients", len(zero), "0", detail)


def _gradient_norms(ctx: CheckContext, f: dict[str, Any]) -> Iterator[Row]:
    norms = f["norms"]
    total = math.sqrt(sum(v * v for v in norms.values()))
    limit, ratio_limit = ctx.threshold("max_total_norm"), ctx.threshold("min_layer_ratio")
    why = "; exploding gradients: lower the init scale or clip" if total > limit else ""
    detail = f"loss {f['loss']:.4g} ({f['what']}){why}"
    yield ctx.row(WARN if total > limit else PASS, "total gradient norm", total, f"<= {limit:g}", detail)
    layers: dict[str, float] = {}
    for n, v in norms.items():
        layers[_layer_key(n)] = layers.get(_layer_key(n), 0.0) + v * v
    layers = {k: math.sqrt(v) for k, v in layers.items()}
    positive = [v for v in layers.values() if v > 0]
    if len(positive) >= 2:
        ratio = min(positive) / max(positive)
        lo = min(layers, key=lambda k: layers[k] if layers[k] > 0 else math.inf)
        hi = max(layers, key=layers.__getitem__)
        detail = f"smallest {lo} ({fmt(layers[lo])}), largest {hi} ({fmt(layers[hi])})"
        detail += "; vanishing gradients in the smallest layer" if ratio < ratio_limit else ""
        status = WARN if ratio < ratio_limit else PASS
        yield ctx.row(status, "min/max layer gradient norm", ratio, f">= {ratio_limit:g}", detail)
    if layers:
        _gradient_figure(ctx, layers)


def _gradient_figure(ctx: CheckContext, layers: dict[str, float]) -> None:
    ctx.save_figure(functools.partial(_draw_gradient_norms, layers), "gradient_norms")


def _draw_gradient_norms(layers: dict[str, float]) -> Figure:
    fig = new_figure(6.4, max(2.5, 0.28 * len(layers) + 1))
    ax = fig.add_subplot()
    names = list(layers)
    norms = [max(layers[k], 1e-30) for k in names]
    ax.barh(range(len(names)), norms, color="#55a868")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    log_scale(ax, "x", norms)
    ax.set_xlabel("gradient norm")
    ax.set_title("Gradient norm per layer (one backward)")
    return fig


def _gradient_step(ctx: CheckContext, f: dict[str, Any]) -> Iterator[Row]:
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
