"""The LightningModule around the user's model, and the sampler that gives one device and several
the same batches.

This module imports ``lightning.pytorch`` at the top: only ``fit.fit`` imports it, after the install
gate has made sure lightning is there (``import tbkit`` stays light).

Throughput (issue 25): the data sit on the training device and each step takes its rows with one
index (no per-row Python collation); the step's loss stays on the device (``History`` reads the
losses back in batches); nothing is logged per step unless the progress bar is shown.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Optional, TypeVar, Union

import lightning.pytorch as pl
import torch

from tbkit.training.config import TrainConfig
from tbkit.training.data import TokenData, lm_loss
from tbkit.training.optimizers import adamw
from tbkit.training.schedule import warmup_cosine

if TYPE_CHECKING:
    from lightning.pytorch.utilities.types import OptimizerLRScheduler

    from tbkit.sources.loaded import LoadedModel

# one step's rows: (ids, mask)
Batch = tuple[torch.Tensor, torch.Tensor]
T = TypeVar("T")


class EpochSampler(torch.utils.data.Sampler[int]):
    """Epoch ``e`` visits a permutation seeded by (seed, e); process ``rank`` of ``world`` takes
    every ``world``-th index of it, starting at ``rank``.

    With ``batch_size // world`` rows per process, global step ``i`` then trains on permutation
    positions ``i*B … (i+1)*B - 1`` whatever ``world`` is, so one device and several see the same
    batches in the same order, and a resumed run gets the epoch's order back (Lightning calls
    ``set_epoch``). When the data do not split evenly, the last ``n % world`` indices of the
    epoch's permutation are left out (different ones each epoch), so every process runs the same
    number of steps, which DDP needs.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.world

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)
        usable = order[: len(self) * self.world]
        return iter(usable[self.rank :: self.world].tolist())


class EpochBatches(torch.utils.data.Sampler[torch.Tensor]):
    """``EpochSampler``'s order in batches of ``batch`` indices, as index tensors on ``device``:
    the epoch's order goes to the device once, each step slices it."""

    def __init__(self, order: Union[EpochSampler, range], batch: int, device: torch.device) -> None:
        self.order, self.batch, self.device = order, batch, device

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.order, "set_epoch"):  # the validation order (a range) has no epochs
            self.order.set_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch)

    def __iter__(self) -> Iterator[torch.Tensor]:
        # a generator: the order is drawn at the first batch, not when the iterator is made (a
        # resumed run makes it before Lightning sets the epoch, as torch's BatchSampler is lazy too)
        index = torch.tensor(list(self.order), dtype=torch.long).to(self.device)
        yield from index.split(self.batch)  # type: ignore[no-untyped-call]  # torch leaves Tensor.split unannotated


class Blocks(torch.utils.data.Dataset[Batch]):
    """(ids, mask) rows on the device; ``blocks[index_tensor]`` is a whole batch in one gather."""

    def __init__(self, data: TokenData, device: torch.device) -> None:
        self.ids, self.mask = data.input_ids.to(device), data.attention_mask.to(device)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __getitem__(self, index: torch.Tensor) -> Batch:
        return self.ids[index], self.mask[index]


def as_is(batch: T) -> T:
    """The DataLoader's collate: a batch from ``Blocks`` is already one."""
    return batch


class CausalLM(pl.LightningModule):
    """Wraps the user's module (as ``self.net``) with the causal-LM loss, the optimizer and the
    data loaders (built per process, where rank, world size and device are known)."""

    def __init__(
        self,
        loaded: LoadedModel,
        train_data: TokenData,
        val_data: TokenData,
        config: TrainConfig,
        total_steps: int,
        batch: int,
    ) -> None:
        super().__init__()
        self.net = loaded.module
        self.loaded = loaded
        self.train_data, self.val_data = train_data, val_data
        self.config, self.total_steps = config, total_steps
        self.batch = batch  # rows per process per step
        # this step's loss averaged over all processes (History reads it)
        self.global_loss: Optional[torch.Tensor] = None
        self._val_sums: list[torch.Tensor] = []  # per validation batch, on the device: (loss sum, token count)

    def _loader(self, data: TokenData, order: Union[EpochSampler, range]) -> torch.utils.data.DataLoader[Batch]:
        device = self.trainer.strategy.root_device
        return torch.utils.data.DataLoader(
            Blocks(data, device), batch_size=None, sampler=EpochBatches(order, self.batch, device), collate_fn=as_is
        )

    def train_dataloader(self) -> torch.utils.data.DataLoader[Batch]:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        return self._loader(self.train_data, EpochSampler(len(self.train_data), self.config.seed, rank, world))

    def val_dataloader(self) -> torch.utils.data.DataLoader[Batch]:
        # every process evaluates the whole (small) validation set: val_loss is exact and the
        # same on every rank, with nothing to reduce
        return self._loader(self.val_data, range(len(self.val_data)))

    def _loss(self, batch: Batch, reduction: str = "mean") -> torch.Tensor:
        ids, mask = batch
        return lm_loss(self.loaded.forward(ids, attention_mask=mask), ids, mask, reduction=reduction)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        if self.trainer.world_size > 1:
            # one small all-reduce: the step's loss over all processes, so metrics read as on one device
            self.global_loss = self.trainer.strategy.reduce(loss.detach(), reduce_op="mean")
        else:
            self.global_loss = loss.detach()
        if self.config.progress:  # the bar shows it: a read-back per step only when someone watches
            self.log("train_loss", self.global_loss, on_step=True, prog_bar=True, batch_size=len(batch[0]))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_sums = []

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        # summed and counted per token, so a padded last block weighs what it holds
        self._val_sums.append(torch.stack([self._loss(batch, reduction="sum"), batch[1][:, 1:].sum().float()]))

    def on_validation_epoch_end(self) -> None:
        # one read-back per validation; float64 on the host (MPS has none)
        total, count = torch.stack(self._val_sums).cpu().double().sum(0).tolist() if self._val_sums else (0.0, 0)
        val = total / max(1, int(count))
        distributed = self.trainer.world_size > 1
        self.log("val_loss", val, prog_bar=True, sync_dist=distributed)
        self.log("val_ppl", math.exp(min(val, 50.0)), sync_dist=distributed)

    def configure_optimizers(self) -> OptimizerLRScheduler:
        # no weight decay on biases and norm weights (1-D tensors): the usual AdamW practice
        decay = [p for p in self.net.parameters() if p.requires_grad and p.dim() >= 2]
        other = [p for p in self.net.parameters() if p.requires_grad and p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.config.weight_decay}, {"params": other, "weight_decay": 0.0}]
        opt = adamw(groups, lr=self.config.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(self.config.warmup_steps, self.total_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
