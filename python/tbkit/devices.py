"""Which torch device a run uses: one rule for the checks (``tbkit.run``) and for training.

As asked (checked: a device that is not there is a UsageError naming the way out), else where the
model already lives, else CUDA, then Apple MPS, then the CPU. torch is imported inside: ``import
tbkit`` stays light.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from tbkit.errors import UsageError


def mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def checked_device(device: Any) -> Any:
    """``device`` (a string or torch.device) as a torch.device that this machine has."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UsageError(f"{device!r} is not a device ({err})", "Use cpu, cuda, cuda:1 or mps.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "device 'cuda' was asked for but this torch sees no CUDA GPU",
            "Use --device cpu, or a runtime with a GPU (Colab: Runtime → Change runtime type).",
        )
    if dev.type == "mps" and not mps_available():
        raise UsageError("device 'mps' was asked for but is not available here", "Use --device cpu.")
    return dev


def resolve_device(device: Any = None, module: Any = None) -> Any:
    """The device to run on: as asked, else where ``module`` already lives, else CUDA, then Apple
    MPS, then CPU. Asking for a device that is not there is a UsageError."""
    import torch

    if device is not None:
        return checked_device(device)
    if module is not None:
        devices = {p.device for p in module.parameters()}
        if len(devices) == 1 and next(iter(devices)).type != "cpu":
            return next(iter(devices))
        if len(devices) > 1:  # spread over devices (device_map): inputs go where the first layer is
            return next(module.parameters()).device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def rng_devices(device: Any) -> list[int]:
    """The CUDA generators a run forks with ``torch.random.fork_rng(devices=...)`` and reseeds
    with :func:`seed_forked`: the run device's own (the current CUDA device when the device names
    none), or none off CUDA."""
    import torch

    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def seed_forked(seed: int, device: Any) -> None:
    """Seed the generators that ``rng_devices(device)`` forks, and only those. ``torch.manual_seed``
    would also reseed every other GPU and queue a seed for CUDA not yet initialised: changes that
    outlive the fork and reach the caller's notebook. It also costs 190 µs a call against 1.3 µs
    here (it formats a stack trace per backend), and the checks reseed before every compared forward."""
    import torch

    torch.default_generator.manual_seed(seed)
    for index in rng_devices(device):
        torch.cuda.default_generators[index].manual_seed(seed)
    if device.type == "mps":  # draws on the device come from its own generator (not forked: torch.mps has no fork)
        torch.mps.manual_seed(seed)


@contextlib.contextmanager
def seeded_fork(seed: int, device: Any) -> Iterator[None]:
    """Inside: the CPU's and the run device's random streams restarted from ``seed``; after: both
    as they were (``torch.random.fork_rng``), so two forwards compared by a check see the same draws."""
    import torch

    with torch.random.fork_rng(devices=rng_devices(device)):
        seed_forked(seed, device)
        yield
