"""Counting host reads: every ``item()`` / ``float()`` / ``int()`` / ``bool()`` / ``tolist()`` /
``numpy()`` / ``.cpu()`` / ``.to("cpu")`` of a tensor, seen by a ``TorchFunctionMode``. On a GPU each
is a wait for every queued kernel (a CUDA sync); the count is exact on any device, so the CPU is
enough to see where a check or a training step would wait. Used by tests/checks/test_host_reads.py
and benchmarks/bench_host_reads.py."""

from __future__ import annotations

import collections
from typing import Any, Callable

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


def is_read(func: Any, args: tuple, kwargs: dict) -> bool:
    if func in READS:
        return True
    return func is torch.Tensor.to and any(str(a) == "cpu" for a in (*args[1:], *kwargs.values()))


class CountReads(TorchFunctionMode):
    """``counts[where()]`` += 1 for each host read while active (``where`` names the current place)."""

    def __init__(self, where: Callable[[], str] = lambda: "all") -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()
        self.where = where

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if is_read(func, args, kwargs):
            self.counts[self.where()] += 1
        return func(*args, **kwargs)
