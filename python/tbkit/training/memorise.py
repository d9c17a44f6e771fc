"""Memorise one fixed batch: the work under the ``overfit`` check, at the speed of a plain loop.

Adam on the fixed batch until the loss has fallen by ``loss_drop`` of its start and the argmax
reproduces every target, or ``steps`` steps. The losses and hit counts of the steps stay on the
device and are read back every ``read_every`` steps (1 on the CPU, where reading costs nothing):
the stopping rule is then applied to those steps in order, so the result (losses up to the step
that stopped, its hits) is what checking every step gives; the few steps run past the stop train
a model that ``restore.preserved`` puts back anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from tbkit.training.optimizers import adam

if TYPE_CHECKING:
    import torch


@dataclass
class Memorised:
    losses: list[float] = field(default_factory=list)  # per step, up to and including the step that stopped
    hits: int = 0  # targets the argmax reproduced at that step
    total: int = 0  # targets

    def stopped(self, loss: float, hits: int, last: bool, loss_drop: float) -> bool:
        """Record one step's loss and hits; True when the run ends at this step."""
        self.losses.append(loss)
        self.hits = hits
        if not math.isfinite(loss) or last:
            return True
        return loss < (1 - loss_drop) * self.losses[0] and hits == self.total


def memorise(
    forward: Callable[[Any], Any],
    module: Any,
    ids: torch.Tensor,
    *,
    steps: int,
    lr: float,
    loss_drop: float,
    next_token: bool = True,
    read_every: Optional[int] = None,
) -> Memorised:
    """Adam (``lr``, clip 1.0) on ``ids`` through ``forward`` (the caller sets modes, seeds and
    restores the model). ``next_token``: logits at t predict ids at t+1, else reconstruct ids.
    ``read_every``: steps between read-backs (default 1 on the CPU, 8 on an accelerator)."""
    import torch

    for p in module.parameters():
        p.grad = None
    params = [p for p in module.parameters() if p.requires_grad]
    opt = adam(params, lr=lr)
    read_every = read_every or (1 if ids.device.type == "cpu" else 8)
    result, pending = Memorised(), []
    for step in range(steps + 1):
        loss, hits, total = _loss_and_hits(forward, ids, next_token)
        result.total = total
        pending.append((loss.detach(), hits))
        if len(pending) == read_every or step == steps:
            if _read_back(result, pending, step - len(pending) + 1, steps, loss_drop):
                return result
            pending = []
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return result


def _loss_and_hits(
    forward: Callable[[Any], Any], ids: torch.Tensor, next_token: bool
) -> tuple[torch.Tensor, torch.Tensor, int]:
    import torch.nn.functional as F

    out = forward(ids).float()
    # encoders with an LM head: reconstruct the token at each position
    logits, target = (out[:, :-1], ids[:, 1:]) if next_token else (out, ids)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
    hits = (logits.argmax(-1) == target).sum()  # on the device, read back with the loss
    return loss, hits, target.numel()


def _read_back(
    result: Memorised, pending: list[tuple[torch.Tensor, torch.Tensor]], first: int, steps: int, loss_drop: float
) -> bool:
    """Apply the stopping rule to the pending steps in order (one read-back); True when one stopped."""
    import torch

    values = torch.stack([torch.stack([loss.float(), hits.float()]) for loss, hits in pending]).tolist()
    for offset, (loss, hits) in enumerate(values):
        if result.stopped(loss, int(hits), first + offset == steps, loss_drop):
            return True
    return False
