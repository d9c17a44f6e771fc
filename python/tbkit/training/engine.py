"""The Lightning pieces of the training engine: the LightningModule around the user's model, the
sampler that gives one device and several the same batches, and the metric history.

This module imports ``lightning.pytorch`` at the top: only ``trainer.fit`` imports it, after the
install gate has made sure lightning is there (``import tbkit`` stays light).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
import torch

from tbkit.training.data import lm_loss
from tbkit.training.trainer import warmup_cosine


class EpochSampler(torch.utils.data.Sampler):
    """Epoch ``e`` visits a permutation seeded by (seed, e); process ``rank`` of ``world`` takes
    every ``world``-th index of it, starting at ``rank``.

    With ``batch_size // world`` rows per process, global step ``i`` then trains on permutation
    positions ``i*B … (i+1)*B - 1`` whatever ``world`` is, so one device and several see the same
    batches in the same order, and a resumed run gets the epoch's order back (Lightning calls
    ``set_epoch``). When the data do not split evenly, the last ``n % world`` indices of the
    epoch's permutation are left out (different ones each epoch), so every process runs the same
    number of steps, which DDP needs.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.world

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)
        usable = order[: len(self) * self.world]
        return iter(usable[self.rank :: self.world].tolist())


class CausalLM(pl.LightningModule):
    """Wraps the user's module (as ``self.net``) with the causal-LM loss, the optimizer and the
    data loaders (built per process, where rank and world size are known)."""

    def __init__(self, loaded, train_data, val_data, *, lr, weight_decay, warmup_steps, total_steps, batch, seed):
        super().__init__()
        self.net = loaded.module
        self.loaded = loaded
        self.train_data, self.val_data = train_data, val_data
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.batch, self.seed = batch, seed  # batch: rows per process per step
        self.global_loss = None  # this step's loss averaged over all processes (History reads it)
        self._val_sum = 0.0
        self._val_count = 0

    def train_dataloader(self):
        ds = torch.utils.data.TensorDataset(self.train_data.input_ids, self.train_data.attention_mask)
        world, rank = self.trainer.world_size, self.trainer.global_rank
        return torch.utils.data.DataLoader(
            ds, batch_size=self.batch, sampler=EpochSampler(len(ds), self.seed, rank, world)
        )

    def val_dataloader(self):
        # every process evaluates the whole (small) validation set: val_loss is exact and the
        # same on every rank, with nothing to reduce
        ds = torch.utils.data.TensorDataset(self.val_data.input_ids, self.val_data.attention_mask)
        return torch.utils.data.DataLoader(ds, batch_size=self.batch)

    def _loss(self, batch, reduction="mean"):
        ids, mask = batch
        return lm_loss(self.loaded.forward(ids, attention_mask=mask), ids, mask, reduction=reduction)

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        if self.trainer.world_size > 1:
            # one small all-reduce: the step's loss over all processes, logged as it is (no second
            # reduction through sync_dist), so metrics read as on one device
            self.global_loss = self.trainer.strategy.reduce(loss.detach(), reduce_op="mean")
        else:
            self.global_loss = loss.detach()
        self.log("train_loss", self.global_loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch[0]))
        return loss

    def on_validation_epoch_start(self):
        self._val_sum, self._val_count = 0.0, 0

    def validation_step(self, batch, batch_idx):
        # summed and counted per token, so a padded last block weighs what it holds
        self._val_sum += float(self._loss(batch, reduction="sum"))
        self._val_count += int(batch[1][:, 1:].sum())

    def on_validation_epoch_end(self):
        val = self._val_sum / max(1, self._val_count)
        distributed = self.trainer.world_size > 1
        self.log("val_loss", val, prog_bar=True, sync_dist=distributed)
        self.log("val_ppl", math.exp(min(val, 50.0)), sync_dist=distributed)

    def configure_optimizers(self):
        # no weight decay on biases and norm weights (1-D tensors): the usual AdamW practice
        decay = [p for p in self.net.parameters() if p.requires_grad and p.dim() >= 2]
        other = [p for p in self.net.parameters() if p.requires_grad and p.dim() < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": other, "weight_decay": 0.0}],
            lr=self.lr,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(self.warmup_steps, self.total_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class History(pl.Callback):
    """Per-epoch and per-step metrics; stateful so a resumed run keeps the earlier history.

    Losses are global (averaged over all processes). When the run's processes are forked, only
    the parent returns from ``fit``: process 0 writes the history to ``export_path`` at the end
    for the parent to read back (``load_export``)."""

    def __init__(self, export_path: Optional[Path] = None):
        self.epochs: list = []
        self.steps: list = []
        self.global_step = 0
        self.export_path = export_path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append(
            {
                "step": trainer.global_step,
                "train_loss": float(pl_module.global_loss),
                "lr": float(trainer.optimizers[0].param_groups[0]["lr"]),
            }
        )

    def on_train_epoch_end(self, trainer, pl_module):
        m = trainer.callback_metrics
        row = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "train_loss": float(m["train_loss_epoch"]) if "train_loss_epoch" in m else float("nan"),
        }
        if "val_loss" in m:
            row["val_loss"] = float(m["val_loss"])
            row["val_ppl"] = math.exp(min(row["val_loss"], 50.0))
        self.epochs.append(row)

    def on_fit_end(self, trainer, pl_module):
        self.global_step = int(trainer.global_step)
        if self.export_path is not None and trainer.is_global_zero:
            tmp = Path(str(self.export_path) + ".tmp")
            tmp.write_text(json.dumps(self.state_dict()))
            tmp.replace(self.export_path)

    def load_export(self) -> bool:
        if self.export_path is None or not Path(self.export_path).is_file():
            return False
        self.load_state_dict(json.loads(Path(self.export_path).read_text()))
        return True

    def state_dict(self):
        return {"epochs": list(self.epochs), "steps": list(self.steps), "global_step": self.global_step}

    def load_state_dict(self, state):
        self.epochs = list(state.get("epochs", []))
        self.steps = list(state.get("steps", []))
        self.global_step = int(state.get("global_step", 0))
