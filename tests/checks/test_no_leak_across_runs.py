"""A notebook runs tbkit many times in one kernel: a run must not keep the model's activations
alive afterwards (the memory measurement once did, through autograd's saved-tensor hooks)."""

from __future__ import annotations

import gc
import io
import weakref

import torch
from torch import nn

import tbkit
from tbkit.checks.shared import measure_activations


class SavesItsOutput(nn.Module):
    """log_softmax saves its *output* for backward: the case where a saved tensor handed back
    with its grad_fn would form a cycle that Python's collector cannot break."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(50, 16), nn.Linear(16, 50)
        self.outputs: list[weakref.ref[torch.Tensor]] = []

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = torch.log_softmax(self.head(self.emb(input_ids)), dim=-1)
        self.outputs.append(weakref.ref(out))
        return out


def test_the_activation_measurement_leaves_no_graph_alive():
    lm = tbkit.load(SavesItsOutput(), kind="decoder")
    lm.module.outputs.clear()  # loading ran a forward of its own
    nbytes, out = measure_activations(lm, torch.randint(0, 50, (2, 8)), None, torch.device("cpu"))
    assert nbytes > 0 and out.grad_fn is None
    del out
    gc.collect()
    assert len(lm.module.outputs) == 1 and lm.module.outputs[0]() is None


def test_a_whole_run_leaves_none_of_its_forwards_alive():
    lm = tbkit.load(SavesItsOutput(), kind="decoder")
    tbkit.run(lm, tiers=(1,), out_dir=None, progress=False, stream=io.StringIO())
    gc.collect()
    alive = [ref() for ref in lm.module.outputs if ref() is not None]
    assert len(lm.module.outputs) > 10 and alive == []
