"""Counting host reads: every ``item()`` / ``float()`` / ``int()`` / ``bool()`` / ``tolist()`` /
``numpy()`` / ``.cpu()`` of a tensor, seen by a ``TorchFunctionMode``. On a GPU each is a wait for
every queued kernel (a CUDA sync); the count is exact on any device, so the CPU is enough to see
where a check or a training step would wait. ``.to(device)`` is not counted: on a CPU run it cannot
tell a move to the host from a move to the run's device. Used by tests/checks/test_host_reads.py
and benchmarks/bench_host_reads.py."""

from __future__ import annotations

import collections
from typing import Callable

import torch
from torch.overrides import TorchFunctionMode

READS = {
    torch.Tensor.item,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__index__,
    torch.Tensor.__bool__,
    torch.Tensor.tolist,
    torch.Tensor.numpy,
    torch.Tensor.cpu,
}


class CountReads(TorchFunctionMode):
    """``counts[where()]`` += 1 for each host read while active (``where`` names the current place)."""

    def __init__(self, where: Callable[[], str] = lambda: "all") -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()
        self.where = where

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in READS:
            self.counts[self.where()] += 1
        return func(*args, **(kwargs or {}))
