"""The ``summary`` check (Tier 1)."""

from __future__ import annotations

from collections.abc import Iterator

from tbkit.checks import inputs as inp
from tbkit.checks.base import CheckContext, Row, register
from tbkit.checks.tier1.common import PASS


@register("summary", tier=1, summary="parameters (total/trainable), size in MB, per-module table")
def check_summary(ctx: CheckContext) -> Iterator[Row]:
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


def _summary_modules(ctx: CheckContext) -> Iterator[Row]:
    module = ctx.model.module
    lines = []
    for name, child in module.named_children():
        n = sum(p.numel() for p in child.parameters())
        lines.append(f"{name} ({type(child).__name__}): {n:,} params")
    own = sum(p.numel() for p in module.parameters(recurse=False))
    if own:
        lines.append(f"(directly on {type(module).__name__}): {own:,} params")
    yield ctx.row(PASS, "modules", len(lines), detail="\n".join(lines) or "no submodules")


def _summary_facts(ctx: CheckContext) -> Iterator[Row]:
    lm = ctx.model
    facts = (
        f"{type(lm.module).__name__}: kind {lm.kind} ({lm.kind_reason}), vocab {lm.vocab_size} "
        f"(rows of the input embedding), max length "
        f"{lm.max_len if lm.max_len else 'not found (checks use ' + str(inp.DEFAULT_MAX_LEN) + ')'}"
    )
    if lm.notes:
        facts += "; notes: " + "; ".join(str(n) for n in lm.notes)
    yield ctx.row(PASS, "model", lm.kind, detail=facts)
