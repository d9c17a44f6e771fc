"""Helpers shared by more than one Tier 3 check."""

from __future__ import annotations

from typing import Any, Optional

from tbkit.checks.base import CheckContext

NO_DATA = (
    "no training data given: pass data=… or --data FILE (or synthetic=True to try it on synthetic data, labelled so)"
)


def why_not_trainable(ctx: CheckContext) -> Optional[str]:
    """The SKIP reason for checks that train, or None. The runner asks before installing their
    requirements, so a run without data never installs lightning just to say so."""
    if ctx.run_option("data") is None and not ctx.run_option("synthetic"):
        return NO_DATA
    if ctx.model.kind != "decoder":
        return (
            f"trains a causal language model; this model is a {ctx.model.kind} ({ctx.model.kind_reason}). "
            "Declare kind='decoder' if it is one"
        )
    return None


def data_option(ctx: CheckContext) -> tuple[Any, bool]:
    """(data, synthetic) for checks that train (``why_not_trainable`` has passed)."""
    return ctx.run_option("data"), bool(ctx.run_option("synthetic"))


def synthetic_label(synthetic: bool) -> str:
    return "[SYNTHETIC DATA, asked for] " if synthetic else ""
