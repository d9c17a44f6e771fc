"""The optimizers tbkit's training builds: AdamW for ``train``, ``search`` and ``baseline``, Adam for
``overfit``; both with torch's multi-tensor (foreach) kernels on the CPU as well.

torch picks the multi-tensor implementation by itself only for accelerator tensors; on the CPU it
runs its per-tensor Python loop. Asking for foreach there is the same update with fewer passes:
benchmarks measured one AdamW step at 1.78 -> 1.29 ms for the bundled example (30 tensors) and
33.4 -> 21.5 ms for the 7 M decoder (53 tensors) on 2 cores, about 4 % of a training step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import torch


def multi_tensor(params: Iterable[torch.Tensor]) -> Optional[bool]:
    """``foreach`` for an optimizer over ``params``: True when every one is on the CPU, else None
    (torch's own choice, which is already foreach on CUDA)."""
    devices = {p.device.type for p in params}
    return True if devices == {"cpu"} else None


def adamw(groups: Sequence[dict[str, Any]], lr: float) -> torch.optim.AdamW:
    """AdamW over parameter ``groups`` (each a dict with "params" and its own options)."""
    import torch

    foreach = multi_tensor(p for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, foreach=foreach)


def adam(params: Sequence[torch.Tensor], lr: float) -> torch.optim.Adam:
    import torch

    return torch.optim.Adam(params, lr=lr, foreach=multi_tensor(params))
