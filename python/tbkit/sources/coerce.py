"""One way from "what the user passed" to a ``LoadedModel``, shared by ``tbkit.run`` and training.

A LoadedModel is taken as it is (with ``kind`` declared over the inferred one when given); anything
else goes through ``tbkit.load``. ``log`` receives the provenance before any model code runs and a
one-line summary after.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from tbkit.errors import UsageError
from tbkit.sources import load
from tbkit.sources.loaded import KINDS, LoadedModel


def as_loaded(
    source_or_model: Any,
    kind: Optional[str] = None,
    *,
    log: Optional[Callable[[str], None]] = None,
    load_options: Optional[dict[str, Any]] = None,
) -> LoadedModel:
    """A LoadedModel from a LoadedModel, an ``nn.Module`` or any source ``tbkit.load`` takes."""
    if kind is not None and kind not in KINDS:
        raise UsageError(f"unknown model kind {kind!r}", f"Use one of {', '.join(KINDS)}.")
    if isinstance(source_or_model, LoadedModel):
        lm = source_or_model
        if kind is not None and kind != lm.kind:
            lm = dataclasses.replace(lm, kind=kind, kind_reason="declared")
        if log is not None:
            log(f"tbkit: {lm.summary()}")
        return lm
    lm = load(source_or_model, kind=kind, log=log, **(load_options or {}))
    if log is not None:
        log(
            f"tbkit: {type(lm.module).__name__}: {lm.kind} ({lm.kind_reason}), vocab {lm.vocab_size}, "
            f"max length {lm.max_len if lm.max_len else 'not found'}"
        )
    return lm
