"""Helpers shared by more than one Tier 1 check."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from tbkit.checks import inputs as inp
from tbkit.checks.base import Status

if TYPE_CHECKING:
    import torch

    from tbkit.sources.loaded import LoadedModel

PASS, WARN, FAIL, SKIP = Status.PASS, Status.WARN, Status.FAIL, Status.SKIP


def forward_pair(
    model: LoadedModel, ids: torch.Tensor, device: torch.device, generator: torch.Generator
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(encoder ids, decoder ids) for a forward on fresh ids: seq2seq gets a separate encoder
    input of the same shape; other kinds use ``ids`` alone (decoder ids None)."""
    if model.kind == "seq2seq":
        return inp.token_ids(model, ids.shape[0], ids.shape[1], generator, device), ids
    return ids, None
