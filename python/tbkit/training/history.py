"""The metric history of a run: per-step and per-epoch losses, kept through checkpoints and DDP forks.

This module imports ``lightning.pytorch`` at the top: only ``fit.fit`` imports it, after the install
gate has made sure lightning is there.

The step losses stay on the device as the steps produce them and are read back together (at the
end of an epoch, every ``FLUSH_EVERY`` steps, and before a checkpoint or the export), so the step
loop never waits for the device to report a number.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional, cast

import lightning.pytorch as pl
import torch

FLUSH_EVERY = 256  # steps between read-backs within an epoch: bounds what waits on the device


class History(pl.Callback):
    """Per-epoch and per-step metrics; stateful so a resumed run keeps the earlier history.

    Losses are global (averaged over all processes). When the run's processes are forked, only
    the parent returns from ``fit``: process 0 writes the history to ``export_path`` at the end
    for the parent to read back (``load_export``)."""

    def __init__(self, export_path: Optional[Path] = None) -> None:
        self.epochs: list[dict[str, float]] = []
        self.steps: list[dict[str, float]] = []
        self.global_step = 0
        self.export_path = export_path
        # (step, loss tensor on the device, lr, rows) not read back yet
        self._pending: list[tuple[int, torch.Tensor, float, int]] = []
        self._epoch_rows: list[tuple[float, int]] = []  # (loss, rows) of this epoch's steps, read back

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        lr = float(trainer.optimizers[0].param_groups[0]["lr"])  # a Python float: no device sync
        loss = cast("torch.Tensor", pl_module.global_loss)  # CausalLM.training_step set it for this step
        self._pending.append((trainer.global_step, loss, lr, len(batch[0])))
        if len(self._pending) >= FLUSH_EVERY:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        losses = torch.stack([loss.float() for _, loss, _, _ in self._pending]).tolist()  # one read-back
        for (step, _, lr, rows), loss in zip(self._pending, losses):
            self.steps.append({"step": step, "train_loss": loss, "lr": lr})
            self._epoch_rows.append((loss, rows))
        self._pending = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush()
        rows = sum(n for _, n in self._epoch_rows)
        # weighted by rows, as Lightning's epoch mean of a logged loss was
        train_loss = sum(loss * n for loss, n in self._epoch_rows) / rows if rows else float("nan")
        self._epoch_rows = []
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step, "train_loss": train_loss}
        m = trainer.callback_metrics
        if "val_loss" in m:
            row["val_loss"] = float(m["val_loss"])
            row["val_ppl"] = math.exp(min(row["val_loss"], 50.0))
        self.epochs.append(row)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush()
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

    def state_dict(self) -> dict[str, Any]:
        self._flush()  # a checkpoint (or the export) holds every step so far
        return {"epochs": list(self.epochs), "steps": list(self.steps), "global_step": self.global_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs = list(state.get("epochs", []))
        self.steps = list(state.get("steps", []))
        self.global_step = int(state.get("global_step", 0))
