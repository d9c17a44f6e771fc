"""The optimizers training builds: multi-tensor (foreach) kernels on the CPU, the same update."""

from __future__ import annotations

import torch

import models as M
from tbkit.training.optimizers import adam, adamw, multi_tensor


def _params_with_grads(seed: int) -> list[torch.Tensor]:
    module = M.build(M.HealthyDecoder, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    return params


def test_cpu_parameters_get_the_multi_tensor_kernels_and_others_torchs_choice():
    assert multi_tensor([torch.zeros(2), torch.zeros(3, 3)]) is True
    assert multi_tensor([torch.zeros(2, device="meta")]) is None
    decay, other = _params_with_grads(0)[:4], _params_with_grads(0)[4:]
    opt = adamw([{"params": decay, "weight_decay": 0.01}, {"params": other, "weight_decay": 0.0}], lr=1e-3)
    assert opt.defaults["foreach"] is True and adam(other, lr=1e-3).defaults["foreach"] is True


def test_the_multi_tensor_step_is_torchs_default_step():
    ours, theirs = _params_with_grads(1), _params_with_grads(1)
    opt_ours, opt_theirs = adam(ours, lr=1e-3), torch.optim.Adam(theirs, lr=1e-3)
    assert opt_theirs.defaults["foreach"] is None  # torch's per-tensor loop on the CPU
    for _ in range(3):
        opt_ours.step()
        opt_theirs.step()
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(ours, theirs))  # bitwise, measured
