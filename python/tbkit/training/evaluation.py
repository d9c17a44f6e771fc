"""Validation loss outside Lightning: before and after ``tbkit.train``, and for ``baseline``."""

from __future__ import annotations

from typing import Any

from tbkit.devices import resolve_device
from tbkit.sources.loaded import LoadedModel
from tbkit.training.data import TokenData, lm_loss


def evaluate(loaded: LoadedModel, data: TokenData, batch_size: int = 32, device: Any = None) -> float:
    """Token-weighted mean next-token loss of ``loaded`` on ``data`` (eval mode, no grad).

    The per-batch sums stay on the device and are read back once, at the end."""
    import torch

    module = loaded.module
    # where the weights are (Lightning moves a model back to the CPU when fit ends), else as asked
    params = list(module.parameters())
    device = params[0].device if params else resolve_device(device)
    ids_all, mask_all = data.input_ids.to(device), data.attention_mask.to(device)
    was_training = module.training
    module.eval()
    sums = []
    try:
        with torch.no_grad():
            for i in range(0, len(data), batch_size):
                ids, mask = ids_all[i : i + batch_size], mask_all[i : i + batch_size]
                sums.append(lm_loss(loaded.forward(ids, attention_mask=mask), ids, mask, reduction="sum"))
    finally:
        module.train(was_training)
    total = float(torch.stack(sums).cpu().double().sum()) if sums else 0.0
    return total / max(1, int(mask_all[:, 1:].sum()))
