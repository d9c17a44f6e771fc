"""Helpers shared by more than one Tier 2 check."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

from tbkit.checks import inputs
from tbkit.checks.base import CheckContext, Row, Status


def grad_mode_failure(ctx: CheckContext, err: Exception, what: str) -> Optional[Row]:
    """A FAIL row when the forward works under no_grad but raises in grad mode, else None.

    The classic case (docs/checks_tier1.md, known traps): ``is_causal=True`` without a mask raises in grad mode,
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


def fmt_list(values: Iterable[float], digits: int = 2) -> str:
    return "[" + ", ".join(f"{v:.{digits}f}" for v in values) + "]"
