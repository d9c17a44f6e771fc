"""Small numeric and wording helpers shared by the checks: differences, scales, formatting."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, Optional

if TYPE_CHECKING:
    import torch
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from tbkit.sources.loaded import LoadedModel


def dtype_scale(model: LoadedModel) -> float:
    """How much looser than fp32 a tolerance must be for this model's parameter dtype."""
    import torch

    dtypes = {p.dtype for p in model.module.parameters() if p.is_floating_point()}
    eps = max((torch.finfo(d).eps for d in dtypes), default=torch.finfo(torch.float32).eps)
    return max(1.0, eps / torch.finfo(torch.float32).eps)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| as a float; NaN if either side holds a non-finite value (a finding, not noise)."""
    import torch

    if a.numel() == 0:
        return 0.0
    d = float(torch.linalg.vector_norm((a.float() - b.float()).reshape(-1), ord=float("inf")))
    if math.isfinite(d):
        return d  # both sides finite (a non-finite entry on either side makes the difference inf or NaN)
    return float("nan")


def read_back(scalars: Sequence[torch.Tensor]) -> list[float]:
    """The values of many 0-d tensors, read back to the host at once: one stack and one copy, where
    ``float()`` on each would wait for the device once per tensor (a CUDA sync each). Tensors on
    several devices (a model split across GPUs) are gathered on the CPU first."""
    import torch

    if not scalars:
        return []
    wide = torch.float32 if any(s.device.type == "mps" for s in scalars) else torch.float64  # MPS has no float64
    parts = [s.detach().reshape(()).to(wide) for s in scalars]
    if len({s.device for s in parts}) > 1:
        parts = [s.cpu() for s in parts]
    values: list[float] = torch.stack(parts).tolist()
    return values


def output_scale(t: torch.Tensor) -> float:
    """max(1, max |t|): differences are judged relative to the size of the outputs, because
    fp32 rounding in a GEMM grows with the magnitude of what is summed (logits of ±30 differ by
    ~1e-5 between a batched and a single-row matmul on healthy models)."""
    import torch

    t = t.float()
    if t.numel() == 0:
        return 1.0
    lo, hi = torch.aminmax(t)
    if math.isfinite(float(lo)) and math.isfinite(float(hi)):
        return max(1.0, abs(float(lo)), abs(float(hi)))
    finite = t[torch.isfinite(t)]
    return max(1.0, float(finite.abs().max())) if finite.numel() else 1.0


def describe_error(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".strip()


def fmt(x: Optional[float]) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    return f"{x:.3g}"


def new_figure(width: float = 6.4, height: float = 3.6) -> Figure:
    """A matplotlib Figure built without pyplot (no global state, no GUI backend)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def log_scale(ax: Axes, which: Literal["x", "y"], values: Sequence[float]) -> None:
    """Put one axis of ``ax`` on a log scale that is quick to draw: plain tick labels ("1e-05", not
    matplotlib's default 10^k, which its TeX parser typesets one by one) and minor ticks only when
    ``values`` span under two decades (otherwise 8 a decade, each a tick of five artists). Measured
    with matplotlib 3.11: together they were 40-70 % of the time to draw and save the stability
    histogram and the gradient-norm bars."""
    from matplotlib import ticker

    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_formatter(ticker.LogFormatter())
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    if positive and math.log10(max(positive) / min(positive)) < 2:
        axis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False))  # labels between decades
    else:
        axis.set_minor_locator(ticker.NullLocator())


def kind_guess_note(model: LoadedModel) -> str:
    """For rows whose verdict depends on the model kind: when the kind was inferred, say so, with
    the evidence and how to override it (empty when the kind was declared)."""
    reason = str(model.kind_reason or "")
    if not reason.startswith("inferred"):
        return ""
    why = reason.split(":", 1)[1].strip() if ":" in reason else reason
    other = "encoder" if model.kind != "encoder" else "decoder"
    return (
        f". Note: the kind '{model.kind}' was inferred, not declared ({why}); if this model is not a {model.kind}, "
        f"declare its kind: --kind {other} on the command line, or kind='{other}' in tbkit.load / tbkit.run "
        "(kinds: decoder, encoder, seq2seq)"
    )
