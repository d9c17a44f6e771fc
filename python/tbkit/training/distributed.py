"""How a training run is spread over devices: which Lightning strategy, how many processes, and
what batch each process sees. Pure functions of the arguments and the environment, so they are
tested without a GPU or a cluster.

Strategy when ``devices * num_nodes > 1`` and none is given:

- launched by ``torchrun`` / SLURM / Lightning itself (``LOCAL_RANK`` + ``WORLD_SIZE`` or
  ``SLURM_NTASKS`` in the environment): ``"ddp"``. Every process already runs the script; Lightning
  only joins them.
- several nodes without such a launcher: ``"ddp"`` too (Lightning re-runs the script for each of
  this node's processes, reading ``MASTER_ADDR``/``MASTER_PORT``/``NODE_RANK``).
- otherwise: ``"ddp_fork"``. Lightning forks the workers from this process. Forking is the one way
  that works from a notebook as well as from a script or ``tbkit run``: ``"ddp"`` re-executes the
  command line in each worker (a notebook has none to re-execute, and ``tbkit run`` would redo
  every check), and ``"ddp_spawn"`` pickles the model into fresh interpreters, which fails for a
  model class defined in a notebook cell or loaded from a gist. On the CPU the processes talk over
  gloo, on GPUs over NCCL. The one constraint of forking: CUDA must not be initialised in this
  process yet (``fit`` checks it and says so).

``batch_size`` is the global batch: each of the ``world`` processes takes ``batch_size // world``
rows of every optimizer step, so one device and several train on the same batches (see
``EpochSampler`` in ``lightning_module.py``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

from tbkit.errors import UsageError

# the *_find_unused_parameters_true variants are for models with parameters that some steps do not
# use (plain DDP stops at the next step with an error about parameters that got no gradient)
STRATEGIES = (
    "auto",
    "ddp",
    "ddp_fork",
    "ddp_notebook",
    "ddp_spawn",
    "ddp_find_unused_parameters_true",
    "ddp_fork_find_unused_parameters_true",
    "fsdp",
    "deepspeed",
)


@dataclass(frozen=True)
class Plan:
    devices: int
    num_nodes: int
    strategy: str  # passed to lightning.pytorch.Trainer
    per_device_batch: int

    @property
    def world(self) -> int:
        return self.devices * self.num_nodes

    @property
    def forks(self) -> bool:
        """Lightning starts the workers from this process (only the parent returns from fit)."""
        return self.world > 1 and self.strategy.startswith(("ddp_fork", "ddp_notebook", "ddp_spawn"))

    def describe(self) -> str:
        if self.world == 1:
            return "1 device"
        return (
            f"{self.world} processes ({self.devices} device(s) x {self.num_nodes} node(s)), strategy "
            f"{self.strategy}, {self.per_device_batch} rows per process per step"
        )


def launched_externally(env: Optional[Mapping[str, str]] = None) -> bool:
    """True when torchrun, SLURM or Lightning's own launcher started this process as one rank."""
    env = os.environ if env is None else env
    return ("LOCAL_RANK" in env and "WORLD_SIZE" in env) or "SLURM_NTASKS" in env


def plan(
    devices: Optional[int],
    num_nodes: Optional[int],
    strategy: Optional[str],
    batch_size: int,
    env: Optional[Mapping[str, str]] = None,
) -> Plan:
    """Check the multi-device arguments and choose the strategy (see the module docstring)."""
    devices = 1 if devices is None else devices
    num_nodes = 1 if num_nodes is None else num_nodes
    for name, value in (("devices", devices), ("num_nodes", num_nodes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UsageError(f"{name}={value!r} must be a whole number, 1 or more", f"Pass {name}=1 or more.")
    if strategy is not None and strategy not in STRATEGIES:
        raise UsageError(
            f"strategy {strategy!r} is not one tbkit passes to Lightning",
            f"Use one of {', '.join(STRATEGIES)}, or leave it out to choose automatically.",
        )
    world = devices * num_nodes
    if world == 1:
        return Plan(1, 1, strategy or "auto", batch_size)
    if batch_size % world:
        raise UsageError(
            f"batch_size={batch_size} does not split evenly over {world} processes "
            f"({devices} device(s) x {num_nodes} node(s)); batch_size is the global batch",
            f"Use a multiple of {world}, e.g. batch_size={max(world, batch_size - batch_size % world)}.",
        )
    if strategy in (None, "auto"):
        # several machines without torchrun: Lightning's own "ddp" launcher reads MASTER_ADDR,
        # MASTER_PORT and NODE_RANK and starts this node's processes by re-running the script
        strategy = "ddp" if launched_externally(env) or num_nodes > 1 else "ddp_fork"
    return Plan(devices, num_nodes, strategy, batch_size // world)
