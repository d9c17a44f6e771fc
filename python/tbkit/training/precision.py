"""Which numeric precision a training run uses, and why.

The decision is a pure function of what the accelerator can do (``choose_precision``), so it is
tested without a GPU; ``device_capabilities`` is the only part that asks torch about the hardware.

- GPU with bf16 (Ampere and later): ``bf16-mixed``, same exponent range as fp32, no loss scaling.
- other GPUs (T4, V100, …): ``16-mixed``, fp16 autocast with Lightning's GradScaler (loss scaling
  keeps small gradients from flushing to zero in fp16).
- CPU: ``32-true``. CPU autocast changes the numbers and, without bf16 instructions, is far
  slower: on a 2-core AMD EPYC without avx512_bf16, a bf16-mixed training step of the plain loop
  in benchmarks/bench_compile.py took 182 ms against 21 ms in fp32 (the bundled example) and
  12.7 s against 0.30 s (the 7 M decoder).

An explicit ``precision=`` always wins, once checked against what the accelerator can run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Optional

from tbkit.errors import UsageError

if TYPE_CHECKING:
    import torch

# Lightning's precision names that tbkit passes to the Trainer
LightningPrecision = Literal["32-true", "64-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true"]

# what users write -> Lightning's name
ALIASES: dict[str, LightningPrecision] = {
    "32": "32-true",
    "fp32": "32-true",
    "32-true": "32-true",
    "64": "64-true",
    "fp64": "64-true",
    "64-true": "64-true",
    "bf16": "bf16-mixed",
    "bf16-mixed": "bf16-mixed",
    "bf16-true": "bf16-true",
    "16": "16-mixed",
    "fp16": "16-mixed",
    "16-mixed": "16-mixed",
    "16-true": "16-true",
}


@dataclass(frozen=True)
class Capabilities:
    accelerator: str  # "cpu" | "gpu" | "mps"
    bf16: bool = False  # the GPU runs bf16 matmuls natively


@dataclass(frozen=True)
class PrecisionChoice:
    precision: LightningPrecision  # Lightning's precision string
    reason: str  # one line for the report

    def __str__(self) -> str:
        return f"{self.precision} ({self.reason})"


def choose_precision(caps: Capabilities, requested: Optional[str] = None) -> PrecisionChoice:
    """The precision for a run on ``caps``: ``requested`` when given and runnable, else automatic."""
    if requested is not None:
        return _checked(caps, str(requested).strip().lower())
    if caps.accelerator == "gpu":
        if caps.bf16:
            return PrecisionChoice("bf16-mixed", "automatic: the GPU supports bf16")
        return PrecisionChoice("16-mixed", "automatic: the GPU lacks bf16, so fp16 with loss scaling")
    return PrecisionChoice("32-true", f"automatic: fp32 on {caps.accelerator.upper()}")


def _checked(caps: Capabilities, requested: str) -> PrecisionChoice:
    name = ALIASES.get(requested)
    if name is None:
        raise UsageError(
            f"precision {requested!r} is not known",
            "Use one of 32-true (fp32), bf16-mixed (bf16), 16-mixed (fp16), bf16-true, 16-true, 64-true; "
            "or leave it out to choose automatically.",
        )
    if name.startswith("16") and caps.accelerator == "cpu":
        raise UsageError(
            f"precision {name} (fp16) does not run on the CPU",
            "Use precision='bf16-mixed' or '32-true' on the CPU, or train on a GPU.",
        )
    if name.startswith("bf16") and caps.accelerator == "gpu" and not caps.bf16:
        raise UsageError(
            f"precision {name} was asked for, but this GPU has no bf16 support",
            "Use precision='16-mixed' (fp16 with loss scaling), or leave it out to choose automatically.",
        )
    return PrecisionChoice(name, "asked for")


def device_capabilities(device: torch.device, fork_safe: bool = False) -> Capabilities:
    """What ``device`` (a torch.device) can do. ``fork_safe=True`` asks without initialising CUDA in
    this process (a CUDA-initialised process cannot fork DDP workers): a short child process looks."""
    import torch

    if device.type == "cuda":
        if not fork_safe:
            return Capabilities("gpu", bool(torch.cuda.is_bf16_supported()))
        import subprocess
        import sys

        code = f"import torch; print(int(torch.cuda.is_bf16_supported()) if torch.cuda.device_count() > {device.index or 0} else 0)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        return Capabilities("gpu", out.stdout.strip() == "1")
    return Capabilities("mps" if device.type == "mps" else "cpu")
