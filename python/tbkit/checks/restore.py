"""Work on the user's model itself and put it back exactly: ``with preserved(module): ...``.

Checks that train or differentiate (gradient_flow, attribution, overfit, baseline) used to work on
``copy.deepcopy(model)``. A copy can lie: a block that calls its MLP through a lambda closing over
the *original* submodule runs the original's weights from inside the copy, so the copy's MLP never
gets a gradient and the original gets ``.grad`` set. Working on the model itself and restoring it
afterwards has neither problem, and costs one clone of the parameters instead of a whole model.

What comes back, bit for bit, whatever happens inside (an exception, Ctrl-C): every parameter and
buffer (the same tensor objects, with their values), ``.grad`` (including ``None``),
``requires_grad``, each submodule's train/eval flag, and the torch (CPU and CUDA), numpy and Python
random states.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import torch
    from torch import nn

# (owner module, name, Parameter, value, grad, requires_grad)
_ParamEntry = tuple["nn.Module", str, "nn.Parameter", "torch.Tensor", Optional["torch.Tensor"], bool]
# (owner module, name, tensor or None, value or None)
_BufferEntry = tuple["nn.Module", str, Optional["torch.Tensor"], Optional["torch.Tensor"]]


@dataclass
class _Snapshot:
    params: list[_ParamEntry] = field(default_factory=list)
    buffers: list[_BufferEntry] = field(default_factory=list)
    flags: list[tuple[nn.Module, bool]] = field(default_factory=list)  # (module, training)
    rng: dict[str, Any] = field(default_factory=dict)


def _rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    # torch.cuda.is_initialized has no annotations in torch
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy

        state["numpy"] = numpy.random.get_state()
    except ImportError:  # numpy is a Tier 1 dependency, but the snapshot must not need it
        pass
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy

        numpy.random.set_state(state["numpy"])


def snapshot(module: nn.Module) -> _Snapshot:
    """Everything ``restore`` puts back. Values are cloned; the tensor objects are kept too, so
    references the user holds (an optimizer's param list) stay valid after the restore."""
    snap = _Snapshot(rng=_rng_state())
    for owner in module.modules():
        snap.flags.append((owner, owner.training))
        for name, p in owner._parameters.items():
            if p is None:
                continue
            grad = None if p.grad is None else p.grad.detach().clone()
            snap.params.append((owner, name, p, p.detach().clone(), grad, p.requires_grad))
        for name, b in owner._buffers.items():
            snap.buffers.append((owner, name, b, None if b is None else b.detach().clone()))
    return snap


def restore(snap: _Snapshot) -> None:
    """Put back what ``snapshot`` saw (see the module docstring for the list)."""
    import torch

    with torch.no_grad():
        for owner, name, p, value, grad, requires_grad in snap.params:
            owner._parameters[name] = p  # a check that swapped the object gets the original back
            if p.data.shape != value.shape or p.data.dtype != value.dtype or p.data.device != value.device:
                p.data = value  # resized or moved inside the check: the saved tensor is the original value
            else:
                p.data.copy_(value)
            p.requires_grad_(requires_grad)
            p.grad = grad
        for owner, name, b, saved in snap.buffers:
            owner._buffers[name] = b
            if b is not None and saved is not None:  # saved is None exactly when b is
                if b.shape != saved.shape or b.dtype != saved.dtype or b.device != saved.device:
                    b.data = saved
                else:
                    b.copy_(saved)
    for owner, training in snap.flags:
        owner.training = training
    _set_rng_state(snap.rng)


@contextlib.contextmanager
def preserved(module: nn.Module) -> Iterator[_Snapshot]:
    """Run the block on ``module`` itself; afterwards the module and the random states are exactly
    as before, also when the block raises or is interrupted. Yields the snapshot (its saved values
    serve as "before" for a check that compares)."""
    snap = snapshot(module)
    try:
        yield snap
    finally:
        restore(snap)


__all__ = ["preserved", "snapshot", "restore"]
