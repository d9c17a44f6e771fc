"""The capacity check's effective ranks: batched float32 on the model's device, within 1 % of the
float64 singular-value reference on every kind of spectrum the check meets (healthy weights,
collapsed and near-low-rank matrices, huge values, NaN)."""

from __future__ import annotations

import math

import pytest
import torch

from tbkit.checks import effective_rank as er_module
from tbkit.checks.effective_rank import effective_rank, effective_ranks


def _spectrum(rows: int, cols: int, singular_values: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, len(singular_values), generator=g))
    v, _ = torch.linalg.qr(torch.randn(cols, len(singular_values), generator=g))
    return (u * singular_values) @ v.T


def _matrices() -> dict:
    g = torch.Generator().manual_seed(0)
    k = 96
    low_rank = torch.randn(400, 6, generator=g) @ torch.randn(6, k, generator=g)
    return {
        "gaussian tall": torch.randn(700, k, generator=g),
        "gaussian square": torch.randn(k, k, generator=g),
        "gaussian wide": torch.randn(k, 300, generator=g),
        "embedding-like": 0.02 * torch.randn(3000, 64, generator=g),
        "geometric decay 1e-6": _spectrum(300, k, torch.logspace(0, -6, k, dtype=torch.float32), 1),
        "geometric decay 1e-2": _spectrum(300, k, torch.logspace(0, -2, k, dtype=torch.float32), 2),
        "power law": _spectrum(200, k, torch.arange(1, k + 1, dtype=torch.float32) ** -1.5, 3),
        **{
            f"rank 6 + noise {noise:g}": low_rank + noise * torch.randn(400, k, generator=g)
            for noise in (1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 0.0)
        },
        "rank one": torch.outer(torch.randn(50, generator=g), torch.randn(k, generator=g)),
        "huge values": 1e30 * torch.randn(200, k, generator=g),
        "tiny values": 1e-30 * torch.randn(200, k, generator=g),
        "identity": torch.eye(k),
    }


@pytest.mark.parametrize("name", list(_matrices()))
def test_batched_float32_ranks_within_one_percent_of_float64(name):
    m = _matrices()[name]
    expected = effective_rank(m)
    (got,) = effective_ranks([m])
    assert got == pytest.approx(expected, rel=0.01), name


def test_many_shapes_at_once_keep_their_order():
    mats = list(_matrices().values())
    got = effective_ranks(mats)
    assert got == pytest.approx([effective_rank(m) for m in mats], rel=0.01)


def test_reference_values_and_degenerate_matrices():
    assert effective_rank(torch.eye(8)) == pytest.approx(8.0)
    nan = torch.full((4, 4), float("nan"))
    inf = torch.ones(5, 5)
    inf[0, 0] = float("inf")
    ranks = effective_ranks([nan, torch.zeros(5, 3), torch.eye(8), inf])
    assert math.isnan(ranks[0]) and ranks[1] == 0.0 and ranks[2] == pytest.approx(8.0) and math.isnan(ranks[3])
    assert effective_ranks([]) == []


def test_collapsed_matrices_are_recomputed_in_float64_and_healthy_ones_are_not(monkeypatch):
    calls = []
    reference = er_module.effective_rank
    monkeypatch.setattr(er_module, "effective_rank", lambda m: calls.append(tuple(m.shape)) or reference(m))
    g = torch.Generator().manual_seed(5)
    healthy = torch.randn(500, 64, generator=g)
    collapsed = torch.randn(500, 3, generator=g) @ torch.randn(3, 64, generator=g) + 1e-5 * torch.randn(500, 64)
    effective_ranks([healthy, collapsed])
    assert calls == [(500, 64)]  # only the collapsed one; the healthy one stayed on the float32 path


def test_capacity_weight_row_matches_the_float64_reference():
    from tbkit.checks.tier2.capacity import _weight_ranks

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.emb = torch.nn.Embedding(500, 48)
            self.proj = torch.nn.Linear(48, 192)
            self.out = torch.nn.Linear(192, 48)
            with torch.no_grad():  # one collapsed matrix
                self.out.weight.copy_(torch.randn(48, 2) @ torch.randn(2, 192))

    class Loaded:
        module = Model()

    rows = _weight_ranks(Loaded(), torch.device("cpu"))
    params = dict(Loaded.module.named_parameters())
    assert [r[0] for r in rows] == ["emb.weight", "proj.weight", "out.weight"]
    for name, er, ratio, shape in rows:
        assert er == pytest.approx(effective_rank(params[name]), rel=0.01)
        assert ratio == pytest.approx(er / min(shape))
    assert rows[2][1] < 2.5  # the collapsed matrix is reported as such


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the device path")
def test_ranks_on_cuda_match_the_cpu_reference():
    mats = list(_matrices().values())
    got = effective_ranks([m.cuda() for m in mats], torch.device("cuda"))
    assert got == pytest.approx([effective_rank(m) for m in mats], rel=0.01, nan_ok=True)
