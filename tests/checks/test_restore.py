"""Checks that train or differentiate work on the model itself and put it back bit for bit
(issue 13 item 2): ``restore.preserved``, gradient_flow on a closure-over-submodule model, and a
full Tier 1 + Tier 2 run that leaves every tensor, flag and random state as it was."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import models as M
import tbkit
import tbkit.guard.gate
from tbkit.checks.restore import preserved


def state_of(module) -> dict:
    """Everything the user could observe about a model and the random streams, as plain values."""
    return {
        "params": {n: p.detach().clone() for n, p in module.named_parameters()},
        "param_ids": {n: id(p) for n, p in module.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in module.named_buffers()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in module.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in module.named_parameters()},
        "training": {n: m.training for n, m in module.named_modules()},
        "torch_rng": torch.get_rng_state().clone(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "python_rng": random.getstate(),
    }


def assert_same(before: dict, after: dict) -> None:
    for key in ("params", "buffers"):
        assert before[key].keys() == after[key].keys()
        for name, t in before[key].items():
            assert t.dtype == after[key][name].dtype and torch.equal(t, after[key][name]), (key, name)
    assert before["param_ids"] == after["param_ids"]
    for name, g in before["grads"].items():
        other = after["grads"][name]
        assert (g is None) == (other is None), name
        assert g is None or torch.equal(g, other), name
    for key in ("requires_grad", "training", "python_rng"):
        assert before[key] == after[key], key
    assert torch.equal(before["torch_rng"], after["torch_rng"])
    assert np.array_equal(before["numpy_rng"], after["numpy_rng"])


def user_state_model(model=None):
    """A healthy decoder in a state a user might leave it in: training mode with one submodule in
    eval, gradients on some tensors (None on others), one frozen tensor, a BatchNorm buffer."""
    model = model if model is not None else M.build(M.HealthyDecoder)
    model.norm_stats = torch.nn.BatchNorm1d(4)  # buffers that a train-mode forward would update
    model.train()
    model.blocks[1].eval()
    model.pos.weight.requires_grad_(False)
    torch.manual_seed(7)
    for i, p in enumerate(model.parameters()):
        if i % 3 == 0 and p.requires_grad:
            p.grad = torch.randn_like(p)
    return model


def test_preserved_puts_everything_back_after_training_steps_and_an_exception():
    model = user_state_model()
    before = state_of(model)
    with pytest.raises(RuntimeError, match="inside the block"), preserved(model):
        model.eval()
        model.norm_stats.train()
        model.norm_stats(torch.randn(8, 4))  # running stats move
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        model(torch.randint(0, M.VOCAB, (2, 8))).sum().backward()
        opt.step()
        model.pos.weight.requires_grad_(True)
        torch.randn(3), np.random.rand(), random.random()  # every random stream advances
        raise RuntimeError("inside the block")
    assert_same(before, state_of(model))


def test_preserved_puts_everything_back_after_keyboard_interrupt():
    model = user_state_model()
    before = state_of(model)
    with pytest.raises(KeyboardInterrupt), preserved(model):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        model.head.weight.grad = None
        raise KeyboardInterrupt
    assert_same(before, state_of(model))


def test_gradient_flow_on_a_closure_over_submodule_model_does_not_fail_and_leaves_no_grad(tmp_path):
    """minGPT calls its MLP through a lambda over the original submodule: a deepcopy would run
    the original's MLP, so the copy's MLP got no gradient (a false FAIL) and the user's got .grad."""
    lm = M.loaded(M.build(M.MinGPTClosureDecoder))
    model = lm.module
    before = state_of(model)
    report = tbkit.run(lm, checks="gradient_flow", out_dir=tmp_path, progress=False)
    rows = {r.metric: r for r in report.rows}
    assert rows["parameters without gradient"].status.value == "PASS", rows["parameters without gradient"].detail
    assert {r.status.value for r in report.rows} == {"PASS"}, [(r.metric, r.detail) for r in report.rows]
    assert all(p.grad is None for p in model.parameters())
    assert_same(before, state_of(model))


def test_a_full_tier1_and_tier2_run_leaves_every_tensor_of_the_model_as_it_was(tmp_path, monkeypatch):
    pytest.importorskip("captum.attr")  # attribution differentiates through the model: it must run here
    asked = []
    monkeypatch.setattr(tbkit.guard.gate, "ensure", lambda *needs, **kw: asked.append(needs))  # captum is present
    lm = M.loaded(M.build(M.HealthyDecoder))  # loading puts the model in eval: the state is set after
    model = user_state_model(lm.module)
    np.random.seed(3)
    random.seed(3)
    before = state_of(model)
    report = tbkit.run(lm, tiers=(1, 2), out_dir=tmp_path, progress=False, options={"speed_seconds_per_point": 0})
    assert asked == [("captum>=0.9",)]
    ran = {r.check for r in report.rows}
    assert {"gradient_flow", "attribution", "attention", "capacity", "robustness"} <= ran
    assert not [r for r in report.rows if r.status.value == "ERROR"], [r.detail for r in report.rows]
    assert any(r.check == "attribution" and r.metric == "convergence_delta_rel" for r in report.rows)
    assert_same(before, state_of(model))


def test_a_run_leaves_the_cuda_generators_alone_even_before_cuda_starts():
    """torch.manual_seed reseeds every GPU, and where CUDA has not started it queues the seed for
    later: either reaches the caller past the run's fork_rng. The checks seed only the generators
    they fork. (This machine's CUDA never starts: the queued seed is what a GPU notebook would get.)"""
    if torch.cuda.is_initialized():
        pytest.skip("CUDA already started: the queue of lazy seeds is not used")
    model = M.loaded(M.build(M.HealthyDecoder))  # (its construction may seed: not the run's doing)
    tracker = torch.cuda._lazy_seed_tracker
    queued = [id(call) for call in tracker.get_calls()]
    cpu_state = torch.get_rng_state()
    tbkit.run(model, tiers=[1], device="cpu", out_dir=None, progress=False)
    assert [id(call) for call in tracker.get_calls()] == queued  # nothing new queued for the caller's GPUs
    assert torch.equal(torch.get_rng_state(), cpu_state)
