"""The one-batch memorisation under ``overfit`` reads its losses back in batches on an accelerator;
the stopping rule applied afterwards gives what checking every step gives (same losses, same stop)."""

from __future__ import annotations

import math

import pytest
import torch

from models import HealthyDecoder, build, loaded
from tbkit.training.memorise import memorise


def run(read_every: int, steps: int = 40, loss_drop: float = 0.9):
    lm = loaded(build(HealthyDecoder))
    ids = torch.randint(0, lm.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    lm.module.eval()
    return memorise(lm.forward, lm.module, ids, steps=steps, lr=3e-3, loss_drop=loss_drop, read_every=read_every)


@pytest.mark.parametrize("loss_drop", [0.5, 1.0])  # 0.5: stops early; 1.0: runs every step
def test_batched_read_back_stops_where_every_step_checking_stops(loss_drop):
    each, batched = run(1, loss_drop=loss_drop), run(8, loss_drop=loss_drop)
    assert len(each.losses) == len(batched.losses)
    assert batched.losses == pytest.approx(each.losses, rel=1e-5)
    assert (each.hits, each.total) == (batched.hits, batched.total)
    if loss_drop == 1.0:
        assert len(each.losses) == 41  # steps + 1 forwards: the last one measures the final state
    else:
        assert len(each.losses) < 41 and each.losses[-1] < 0.5 * each.losses[0] and each.hits == each.total


def test_a_non_finite_loss_stops_at_that_step():
    class Exploding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, ids):
            return torch.full((*ids.shape, 4), float("nan")) * self.w

    ids = torch.zeros(1, 8, dtype=torch.long)
    m = Exploding()
    done = memorise(m, m, ids, steps=20, lr=1e-3, loss_drop=0.9, read_every=8)
    assert len(done.losses) == 1 and math.isnan(done.losses[0])
