"""Effective rank (Roy & Vetterli 2007) of many matrices at once, on the model's device.

The effective rank is exp(entropy of the normalised singular values): 1 for rank one, min(shape)
for a matrix whose singular values are all equal. Only the singular values are needed, so each
matrix is reduced to its small Gram matrix (k x k, k = the smaller side) and the Gram matrices of
one size are decomposed in one batched ``eigvalsh`` call, in float32, on the device the model
lives on (CPU, CUDA; MPS has no eigvalsh, so it uses the CPU).

Why float32 is accurate enough, and when it is not: the Gram matrix squares the singular values,
so float32 rounding blurs every singular value below about ``sqrt(k * eps) * s_max`` (the
*floor*). The entropy only moves by the share of singular-value mass that sits near the floor;
when that share could exceed ``_FLOOR_MASS_LIMIT`` (5e-4, which bounds the error of the
effective rank far below 1 %), the matrix is recomputed with float64 singular values — that is
the case of collapsed, near-low-rank matrices, which the capacity check exists to report.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from tbkit.checks.numeric import read_back

if TYPE_CHECKING:
    import torch

# Share of the singular-value mass that may sit at float32's rounding floor before a matrix is
# recomputed in float64: the entropy then moves by at most about 5e-4 * (log(1/5e-4) + log k),
# under 0.7 % of the effective rank for k up to 10^4 (tests/checks/test_capacity.py measures it).
_FLOOR_MASS_LIMIT = 5e-4


def effective_rank(matrix: torch.Tensor) -> float:
    """The float64 reference: exp(entropy of the normalised singular values) of one matrix."""
    import torch

    m = matrix.detach().to("cpu", torch.float64)  # float64 is not on every accelerator (MPS)
    with torch.no_grad():
        return _erank_from_singular_values(torch.linalg.svdvals(m).unsqueeze(0))[0]


def effective_ranks(matrices: list[torch.Tensor], device: torch.device | None = None) -> list[float]:
    """Effective rank of each matrix (2-D), in the order given; NaN for a matrix with NaN or inf."""
    import torch

    if not matrices:
        return []
    work = device if device is not None and device.type == "cuda" else torch.device("cpu")
    out: list[float] = [math.nan] * len(matrices)
    groups: dict[int, list[int]] = {}
    with torch.no_grad():
        # NaN or inf anywhere: NaN (read back for all matrices at once, not one wait per matrix)
        finite = read_back([torch.isfinite(m.detach().abs().amax()) for m in matrices])
        for i, m in enumerate(matrices):
            if finite[i]:
                groups.setdefault(min(m.shape), []).append(i)
        # On the CPU, LAPACK's eigvalsh on a few hundred rows barely uses a second core: each
        # shape's matrices are split into one batch per thread (torch releases the GIL inside).
        threads = min(torch.get_num_threads(), 4) if work.type == "cpu" else 1
        batches = []
        for idx in groups.values():
            size = min(_BATCH, max(1, math.ceil(len(idx) / threads)))
            batches += [idx[j : j + size] for j in range(0, len(idx), size)]
        if threads > 1 and len(batches) > 1:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                spectra = list(pool.map(lambda b: _singular_values(matrices, b, work), batches))
        else:
            spectra = [_singular_values(matrices, b, work) for b in batches]
        for batch, s in zip(batches, spectra):
            checked = _checked_eranks(s) if s is not None else [None] * len(batch)
            for i, value in zip(batch, checked):
                out[i] = value if value is not None else effective_rank(matrices[i])
    return out


# Gram matrices decomposed per eigvalsh call: bounds the memory of one stacked batch.
_BATCH = 16


def _singular_values(matrices: list[torch.Tensor], batch: list[int], device: torch.device) -> torch.Tensor | None:
    """Singular values (ascending) of the matrices in ``batch``, which share their smaller side;
    None when eigvalsh does not converge (the caller falls back to float64 SVD)."""
    import torch

    grams = []
    for i in batch:
        m = matrices[i].detach().to(device, torch.float32)
        if m.shape[0] < m.shape[1]:
            m = m.T
        # The effective rank does not depend on scale: dividing by the largest entry keeps the
        # float32 Gram matrix from overflowing for weights with large values.
        scale = m.abs().amax()
        if scale > 0:
            m = m / scale
        grams.append(m.T @ m)
    try:
        eigenvalues: torch.Tensor = torch.linalg.eigvalsh(torch.stack(grams))
    except RuntimeError:  # torch.linalg.LinAlgError: no convergence
        return None
    return eigenvalues.clamp_min(0).sqrt().to("cpu", torch.float64)


def _checked_eranks(s: torch.Tensor) -> list[float | None]:
    """Effective ranks from ascending singular values (one row per matrix); None where too much
    of the mass sits at float32's rounding floor to trust the value (recompute in float64)."""
    import torch

    k = s.shape[-1]
    floor = math.sqrt(k * torch.finfo(torch.float32).eps) * s[:, -1]
    near_floor = (s < 2 * floor.unsqueeze(-1)).sum(-1)
    total = s.sum(-1)
    uncertain_share = near_floor * floor / total.clamp_min(torch.finfo(torch.float64).tiny)
    eranks = _erank_from_singular_values(s)
    checked: list[float | None] = []
    for value, share, tot in zip(eranks, uncertain_share.tolist(), total.tolist()):
        if not math.isfinite(tot):
            checked.append(math.nan)
        elif tot <= 0:
            checked.append(0.0)
        else:
            checked.append(value if share <= _FLOOR_MASS_LIMIT else None)
    return checked


def _erank_from_singular_values(s: torch.Tensor) -> list[float]:
    import torch

    total = s.sum(-1, keepdim=True)
    p = s / total
    plogp = torch.where(p > 0, p * p.log(), torch.zeros_like(p))
    values = torch.exp(-plogp.sum(-1)).tolist()
    return [
        (0.0 if t == 0 else math.nan) if not math.isfinite(t) or t <= 0 else v
        for v, t in zip(values, total.squeeze(-1).tolist())
    ]
