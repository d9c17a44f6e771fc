"""Where and how a run trains: the device (tbkit.devices), the multi-device plan, the precision."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from tbkit.devices import resolve_device
from tbkit.errors import UsageError
from tbkit.training import distributed
from tbkit.training.config import TrainConfig
from tbkit.training.precision import PrecisionChoice, choose_precision, device_capabilities

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class RunSetup:
    device: torch.device  # of this process
    plan: distributed.Plan
    precision: PrecisionChoice

    @property
    def accelerator(self) -> str:
        """Lightning's name for the device type."""
        return {"cuda": "gpu", "mps": "mps"}.get(self.device.type, "cpu")


def run_setup(config: TrainConfig, module: Optional[Any] = None) -> RunSetup:
    """Check the device, multi-device and precision options together; UsageError when they clash.
    The device: as asked, else where ``module`` lives, else CUDA, MPS, CPU (``resolve_device``)."""
    import torch

    device = resolve_device(config.device, module)
    plan = distributed.plan(config.devices, config.num_nodes, config.strategy, config.batch_size)
    if plan.world > 1 and device.type not in ("cpu", "cuda"):
        raise UsageError(
            f"training on several {device.type} devices is not supported", "Use devices=1, or CPU/CUDA devices."
        )
    if plan.world > 1 and device.type == "cuda" and distributed.launched_externally():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))  # torchrun: one GPU per rank
    if plan.forks and device.type == "cuda" and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        raise UsageError(
            f"CUDA is already initialised in this process, so Lightning cannot fork the {plan.world} DDP workers",
            "Restart the kernel and call tbkit.train(devices=N) before anything else uses the GPU, or run a "
            "script under torchrun (docs/tier3.md shows how).",
        )
    caps = device_capabilities(device, fork_safe=plan.forks)
    return RunSetup(device, plan, choose_precision(caps, config.precision))
