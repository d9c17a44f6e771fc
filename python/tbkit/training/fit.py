"""The fit loop: one ``lightning.pytorch.Trainer`` run over a LoadedModel, shared by ``tbkit.train``,
every search trial and the ``baseline`` check (same loss, optimizer, schedule, precision rules and
checkpoints).

lightning is imported inside ``fit`` (it comes through the install gate, and ``import tbkit`` stays
light); so are ``lightning_module`` and ``history``, the two tbkit modules that import it at their top.

Lightning is configured for throughput: no logger, no model summary, no sanity validation, the
progress bar only when asked for, nothing logged per step unless the bar shows it.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from tbkit.errors import TbkitError
from tbkit.sources.loaded import LoadedModel
from tbkit.training.config import TrainConfig
from tbkit.training.data import TokenData
from tbkit.training.distributed import Plan
from tbkit.training.quiet import quiet_lightning
from tbkit.training.run_setup import RunSetup, run_setup

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    from tbkit.training.history import History
    from tbkit.training.lightning_module import CausalLM


@dataclass
class FitOutcome:
    trainer: pl.Trainer
    history: History  # epochs, steps, global_step
    checkpoint_dir: Optional[Path]  # None when no checkpoints were kept
    resumed_from: Optional[Path]
    resumed_step: Optional[int]
    setup: RunSetup
    global_step: int = 0
    is_global_zero: bool = True  # False in the other ranks of a torchrun-launched run

    @property
    def precision(self) -> str:
        return self.setup.precision.precision

    @property
    def precision_reason(self) -> str:
        return self.setup.precision.reason

    @property
    def plan(self) -> Plan:
        return self.setup.plan


def fit(
    loaded: LoadedModel,
    train_data: TokenData,
    val_data: TokenData,
    config: TrainConfig,
    *,
    setup: Optional[RunSetup] = None,
    callbacks: tuple[Callback, ...] = (),
    save_checkpoints: bool = True,
) -> FitOutcome:
    """Train ``loaded.module`` in place with Lightning, as ``config`` says (its callbacks and
    ``callbacks`` both run). ``config.batch_size`` is the global batch; with ``devices * num_nodes
    > 1`` each process takes its share."""
    from tbkit.training.history import History  # imports lightning: see the module docstring

    setup = setup or run_setup(config, loaded.module)
    lit = _lightning_module(loaded, train_data, val_data, config, setup)
    with tempfile.TemporaryDirectory(prefix="tbkit-fit-") as scratch:
        # forked workers: process 0 hands the history back through a file (only the parent returns)
        history = History(Path(scratch) / "history.json" if setup.plan.forks else None)
        ckdir, checkpoints = _checkpointing(save_checkpoints, config.checkpoint_dir, config.checkpoint_every_n_steps)
        resume_path, resumed_step = _resume_point(config.resume and save_checkpoints, ckdir)
        every = [history, *config.callbacks, *callbacks, *checkpoints]
        trainer = _make_trainer(setup, config, every, save_checkpoints, resuming=resume_path is not None)
        _run(trainer, lit, setup, config.seed, resume_path)
        if setup.plan.forks and not history.load_export():
            raise TbkitError(
                f"the {setup.plan.world} training processes ended without reporting their results",
                "Run again with devices=1 to see the error in this process.",
            )
    outcome = FitOutcome(trainer, history, ckdir, resume_path, resumed_step, setup, history.global_step)
    outcome.is_global_zero = bool(trainer.is_global_zero)
    return outcome


def _lightning_module(
    loaded: LoadedModel, train_data: TokenData, val_data: TokenData, config: TrainConfig, setup: RunSetup
) -> CausalLM:
    from tbkit.training.lightning_module import CausalLM  # imports lightning: see the module docstring

    per_epoch = math.ceil((len(train_data) // setup.plan.world) / setup.plan.per_device_batch)
    total = config.epochs * per_epoch
    total = min(config.max_steps, total) if config.max_steps else total
    return CausalLM(loaded, train_data, val_data, config, total, setup.plan.per_device_batch)


def _checkpointing(
    save: bool, checkpoint_dir: Any, every_n_steps: Optional[int]
) -> tuple[Optional[Path], list[ModelCheckpoint]]:
    """(folder or None, ModelCheckpoint callbacks): the latest state (for resume) and the best by val loss."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if not save:
        return ckdir, []
    ckdir = ckdir if ckdir is not None else Path(tempfile.mkdtemp(prefix="tbkit-train-"))
    ckdir.mkdir(parents=True, exist_ok=True)
    latest = ModelCheckpoint(
        dirpath=ckdir, filename="latest-{epoch}-{step}", save_last=True, save_top_k=1, every_n_train_steps=every_n_steps
    )
    best = ModelCheckpoint(dirpath=ckdir, filename="best-{epoch}-{step}", monitor="val_loss", mode="min", save_top_k=1)
    return ckdir, [latest, best]


def _resume_point(resume: bool, ckdir: Optional[Path]) -> tuple[Optional[Path], Optional[int]]:
    """(last.ckpt to resume from or None, its global step)."""
    import torch

    path = ckdir / "last.ckpt" if (resume and ckdir is not None) else None
    if path is None or not path.is_file():
        return None, None
    state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)  # mmap: no full copy
    step = int(state.get("global_step", 0))
    del state
    return path, step


def _make_trainer(
    setup: RunSetup, config: TrainConfig, callbacks: list[Callback], save_checkpoints: bool, resuming: bool
) -> pl.Trainer:
    import lightning.pytorch as pl

    single = setup.plan.world == 1
    one = [setup.device.index or 0] if setup.device.type == "cuda" else 1
    with quiet_lightning(resuming=resuming):
        return pl.Trainer(
            max_epochs=config.epochs,
            max_steps=config.max_steps if config.max_steps else -1,
            accelerator=setup.accelerator,
            devices=one if single else setup.plan.devices,
            num_nodes=setup.plan.num_nodes,
            strategy=setup.plan.strategy,
            use_distributed_sampler=False,  # lightning_module.EpochSampler splits the data itself
            precision=setup.precision.precision,
            gradient_clip_val=1.0,
            logger=False,
            callbacks=callbacks,
            enable_checkpointing=save_checkpoints,
            enable_progress_bar=config.progress,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            deterministic=False,
        )


def _run(trainer: pl.Trainer, lit: CausalLM, setup: RunSetup, seed: int, resume_path: Optional[Path]) -> None:
    """trainer.fit, seeded for this run only: the caller's global RNG state (torch, and numpy /
    random, which Lightning's seed_everything would also reset) is left as it was."""
    import torch

    # forked workers need CUDA untouched here, and fork_rng over a GPU would initialise it
    cuda = setup.device.type == "cuda" and not setup.plan.forks
    rng_devices = [setup.device.index or 0] if cuda else []
    with quiet_lightning(resuming=resume_path is not None), torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        try:
            trainer.fit(lit, ckpt_path=str(resume_path) if resume_path else None)
        except RuntimeError as err:
            if resume_path is not None and ("state_dict" in str(err) or "size mismatch" in str(err)):
                raise TbkitError(
                    f"the checkpoint {resume_path} does not fit this model ({str(err).splitlines()[0]})",
                    "Pass resume=False, or a checkpoint_dir of its own for this model.",
                ) from None
            raise
