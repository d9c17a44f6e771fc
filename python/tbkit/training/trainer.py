"""`tbkit.train`: fine-tune a causal LM with `lightning.pytorch` on the user's data.

One engine (`fit`) serves `tbkit.train`, every hyperparameter-search trial and the `baseline`
check, so all of them share the same loss (padding ignored through the attention mask), the same
optimizer and warmup schedule, AMP on GPU only, and checkpoints that a later call resumes from.

The caller's model is never touched unless ``in_place=True``: training runs on a deep copy.
lightning is obtained through the install gate (`tbkit.guard.gate.ensure`) when missing.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tbkit.errors import TbkitError, UsageError


# ---- dependencies through the gate --------------------------------------------------------------
def require(*requirements: str) -> None:
    """Make sure the given distributions import; install them through the gate when they do not.

    Raises ``InstallRefused`` (from the gate) when installing would break this process."""
    import importlib

    modules = {
        "lightning": "lightning.pytorch",
        "optuna": "optuna",
        "optuna-integration": "optuna_integration",
        "psycopg2-binary": "psycopg2",
    }
    missing = []
    for req in requirements:
        try:
            importlib.import_module(modules.get(req, req.replace("-", "_")))
        except ImportError:
            missing.append(req)
    if not missing:
        return
    from tbkit.guard.gate import ensure

    ensure(*missing)


# ---- models --------------------------------------------------------------------------------------
def as_loaded(model_or_source, kind: Optional[str] = None):
    """A ``LoadedModel`` from a LoadedModel, an ``nn.Module`` or any source ``tbkit.load`` takes."""
    from tbkit.sources.loaded import LoadedModel

    if isinstance(model_or_source, LoadedModel):
        return model_or_source
    from tbkit.sources import load

    return load(model_or_source, kind=kind) if kind else load(model_or_source)


def copy_loaded(loaded, module=None):
    """The same LoadedModel facts around another module (a deep copy unless one is given)."""
    new = dataclasses.replace(loaded, module=copy.deepcopy(loaded.module) if module is None else module)
    new.__dict__.pop("_params_cache", None)
    return new


def pick_device(device=None):
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def precision_for(device) -> str:
    """AMP on GPU only: bf16 where the GPU supports it, else fp16 with loss scaling; fp32 on CPU."""
    import torch

    if device.type == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def block_length(loaded, max_len: Optional[int]) -> int:
    limit = loaded.max_len
    if max_len is None:
        return min(limit, 128) if limit else 128
    if limit is not None and max_len > limit:
        raise UsageError(
            f"max_len {max_len} exceeds the model's maximum sequence length {limit}", f"Use max_len={limit} or less."
        )
    return int(max_len)


def warmup_cosine(warmup_steps: int, total_steps: int, floor: float = 0.1):
    """LR multiplier: linear warmup from 1/warmup to 1 over ``warmup_steps``, then cosine to ``floor``."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def evaluate(loaded, data, batch_size: int = 32, device=None) -> float:
    """Token-weighted mean next-token loss of ``loaded`` on ``data`` (eval mode, no grad)."""
    import torch

    from tbkit.training.data import lm_loss

    module = loaded.module
    # where the weights are (Lightning moves a model back to the CPU when fit ends), else as asked
    params = list(module.parameters())
    device = params[0].device if params else pick_device(device)
    was_training = module.training
    module.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for i in range(0, len(data), batch_size):
                ids = data.input_ids[i : i + batch_size].to(device)
                mask = data.attention_mask[i : i + batch_size].to(device)
                logits = loaded.forward(ids, attention_mask=mask)
                total += float(lm_loss(logits, ids, mask, reduction="sum"))
                count += int(mask[:, 1:].sum())
    finally:
        module.train(was_training)
    return total / max(1, count)


# ---- the Lightning pieces (built on first use: lightning is imported lazily) -----------------------
_CLASSES: dict = {}


def _lightning_classes():
    if _CLASSES:
        return _CLASSES
    import lightning.pytorch as pl
    import torch

    from tbkit.training.data import lm_loss

    class CausalLM(pl.LightningModule):
        """Wraps the user's module (as ``self.net``) with the causal-LM loss and the optimizer."""

        def __init__(self, loaded, lr, weight_decay, warmup_steps, total_steps):
            super().__init__()
            self.net = loaded.module
            self.loaded = loaded
            self.lr, self.weight_decay = lr, weight_decay
            self.warmup_steps, self.total_steps = warmup_steps, total_steps
            self._val_sum = 0.0
            self._val_count = 0

        def _loss(self, batch, reduction="mean"):
            ids, mask = batch
            return lm_loss(self.loaded.forward(ids, attention_mask=mask), ids, mask, reduction=reduction)

        def training_step(self, batch, batch_idx):
            loss = self._loss(batch)
            self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch[0]))
            return loss

        def on_validation_epoch_start(self):
            self._val_sum, self._val_count = 0.0, 0

        def validation_step(self, batch, batch_idx):
            # summed and counted per token, so a padded last block weighs what it holds
            self._val_sum += float(self._loss(batch, reduction="sum"))
            self._val_count += int(batch[1][:, 1:].sum())

        def on_validation_epoch_end(self):
            val = self._val_sum / max(1, self._val_count)
            self.log("val_loss", val, prog_bar=True)
            self.log("val_ppl", math.exp(min(val, 50.0)))

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
        """Per-epoch and per-step metrics; stateful so a resumed run keeps the earlier history."""

        def __init__(self):
            self.epochs: list = []
            self.steps: list = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.steps.append(
                {
                    "step": trainer.global_step,
                    "train_loss": float(loss),
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

        def state_dict(self):
            return {"epochs": list(self.epochs), "steps": list(self.steps)}

        def load_state_dict(self, state):
            self.epochs = list(state.get("epochs", []))
            self.steps = list(state.get("steps", []))

    _CLASSES.update(CausalLM=CausalLM, History=History, pl=pl)
    return _CLASSES


@contextlib.contextmanager
def quiet_lightning(resuming: bool = False):
    """Silence Lightning's banner lines ("GPU available: …", tips) and advice that does not apply
    here; real warnings and errors still show."""
    import logging

    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # DataLoader workers do not suit notebooks (fork + CUDA): we keep 0 on purpose
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*number of training batches.*")
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*")  # lightning's own deprecation
            warnings.filterwarnings("ignore", message=r".*litlogger.*")
            # max_steps can end a run mid-epoch, before any validation: our own evaluate() covers it
            warnings.filterwarnings("ignore", message=r".*could not find the monitored key.*")
            if resuming:  # a folder holding checkpoints is the point of resuming
                warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@dataclass
class FitOutcome:
    trainer: Any
    history: Any
    checkpoint_dir: Optional[Path]  # None when no checkpoints were kept
    resumed_from: Optional[Path]
    resumed_step: Optional[int]
    precision: str


def fit(
    loaded,
    train_data,
    val_data,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    max_steps: Optional[int] = None,
    checkpoint_dir: Optional[Path] = None,
    resume: bool = False,
    device=None,
    seed: int = 0,
    callbacks=(),
    checkpoint_every_n_steps: Optional[int] = None,
    progress: bool = False,
    save_checkpoints: bool = True,
) -> FitOutcome:
    """Train ``loaded.module`` in place with Lightning. The shared engine of train, search and baseline."""
    import torch

    classes = _lightning_classes()
    pl = classes["pl"]
    from lightning.pytorch.callbacks import ModelCheckpoint

    device = pick_device(device)
    precision = precision_for(device)
    g = torch.Generator().manual_seed(seed)
    train_ds = torch.utils.data.TensorDataset(train_data.input_ids, train_data.attention_mask)
    val_ds = torch.utils.data.TensorDataset(val_data.input_ids, val_data.attention_mask)
    train_dl = torch.utils.data.DataLoader(train_ds, batch_size=batch_size, shuffle=True, generator=g)
    val_dl = torch.utils.data.DataLoader(val_ds, batch_size=batch_size)
    per_epoch = math.ceil(len(train_ds) / batch_size)
    total = min(max_steps, epochs * per_epoch) if max_steps else epochs * per_epoch
    lit = classes["CausalLM"](loaded, lr, weight_decay, warmup_steps, total)
    history = classes["History"]()
    cbs = [history, *callbacks]
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if save_checkpoints:
        ckdir = ckdir if ckdir is not None else Path(tempfile.mkdtemp(prefix="tbkit-train-"))
        ckdir.mkdir(parents=True, exist_ok=True)
        # the latest state (for resume) and the best by validation loss
        cbs.append(
            ModelCheckpoint(
                dirpath=ckdir,
                filename="latest-{epoch}-{step}",
                save_last=True,
                save_top_k=1,
                every_n_train_steps=checkpoint_every_n_steps,
            )
        )
        cbs.append(
            ModelCheckpoint(dirpath=ckdir, filename="best-{epoch}-{step}", monitor="val_loss", mode="min", save_top_k=1)
        )
    resume_path = ckdir / "last.ckpt" if (resume and save_checkpoints and (ckdir / "last.ckpt").is_file()) else None
    resumed_step = None
    if resume_path is not None:
        state = torch.load(resume_path, map_location="cpu", weights_only=False, mmap=True)  # mmap: no full copy
        resumed_step = int(state.get("global_step", 0))
        del state
    with quiet_lightning(resuming=resume_path is not None):
        trainer = pl.Trainer(
            max_epochs=epochs,
            max_steps=max_steps if max_steps else -1,
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=[device.index or 0] if device.type == "cuda" else 1,
            precision=precision,
            gradient_clip_val=1.0,
            logger=False,
            callbacks=cbs,
            enable_checkpointing=save_checkpoints,
            enable_progress_bar=progress,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            deterministic=False,
        )
    # Seed torch for this run only: the caller's global RNG state (torch, and numpy / random, which
    # Lightning's seed_everything would also reset) is left as it was.
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with quiet_lightning(resuming=resume_path is not None), torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        try:
            trainer.fit(lit, train_dl, val_dl, ckpt_path=str(resume_path) if resume_path else None)
        except RuntimeError as err:
            if resume_path is not None and ("state_dict" in str(err) or "size mismatch" in str(err)):
                raise TbkitError(
                    f"the checkpoint {resume_path} does not fit this model ({str(err).splitlines()[0]})",
                    "Pass resume=False, or a checkpoint_dir of its own for this model.",
                ) from None
            raise
    return FitOutcome(trainer, history, ckdir, resume_path, resumed_step, precision)


# ---- the public API --------------------------------------------------------------------------------
@dataclass
class TrainResult:
    model: Any  # the trained nn.Module (the caller's own object only with in_place=True)
    metrics: Any  # pandas DataFrame, one row per epoch: epoch, step, train_loss, val_loss, val_ppl
    checkpoints: list  # Paths of the checkpoint files written
    best_val_loss: float
    synthetic: bool
    step_metrics: Any = None  # DataFrame, one row per optimizer step: step, train_loss, lr
    global_step: int = 0
    final_val_loss: float = float("nan")
    initial_val_loss: float = float("nan")  # before training (or before this resumed leg)
    resumed_from: Optional[Path] = None
    resumed_step: Optional[int] = None
    precision: str = "32-true"
    data_description: str = ""
    notes: list = field(default_factory=list)
    loaded: Any = None  # the LoadedModel around ``model``

    def summary(self) -> str:
        lines = [
            f"trained on {self.data_description}" + (" [SYNTHETIC]" if self.synthetic else ""),
            f"{self.global_step} steps, precision {self.precision}; best val loss {self.best_val_loss:.4f} "
            f"(perplexity {math.exp(min(self.best_val_loss, 50)):.2f}), final {self.final_val_loss:.4f}",
        ]
        if self.resumed_from is not None:
            lines.append(f"resumed from {self.resumed_from} at step {self.resumed_step}")
        lines += self.notes
        return "\n".join(lines)


def train(
    model_or_source,
    data=None,
    *,
    epochs: int = 3,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    warmup_steps: int = 0,
    max_len: Optional[int] = None,
    val_fraction: float = 0.1,
    checkpoint_dir=None,
    resume: bool = True,
    synthetic: bool = False,
    device=None,
    seed: int = 0,
    in_place: bool = False,
    max_steps: Optional[int] = None,
    checkpoint_every_n_steps: Optional[int] = None,
    tokenizer_level: str = "char",
    callbacks=(),
    progress: bool = False,
    kind: Optional[str] = None,
) -> TrainResult:
    """Fine-tune a causal LM on ``data`` (a text file path, or token ids (N, T) / a 1-D stream).

    Trains a deep copy unless ``in_place=True``. Synthetic data only with ``synthetic=True`` (and
    then ``result.synthetic`` is True). Checkpoints go to ``checkpoint_dir`` (a new temporary folder
    when None); with ``resume=True`` a ``last.ckpt`` found there is resumed from.
    """
    import pandas as pd

    from tbkit.training import data as tdata

    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if int(value) < 1:
            raise UsageError(f"{name}={value} must be 1 or more", f"Pass {name}=1 or more.")
    if not lr > 0:
        raise UsageError(f"lr={lr} must be positive", "Pass e.g. lr=1e-3.")
    loaded = as_loaded(model_or_source, kind)
    if loaded.kind != "decoder":
        raise UsageError(
            f"tbkit.train trains causal language models; this model's kind is {loaded.kind} ({loaded.kind_reason})",
            "Pass a decoder, or declare kind='decoder' if it is one.",
        )
    block = block_length(loaded, max_len)
    td = tdata.prepare(
        data,
        vocab_size=loaded.vocab_size,
        block_len=block,
        pad_id=loaded.pad_token_id,
        synthetic=synthetic,
        seed=seed,
        level=tokenizer_level,
    )
    train_data, val_data = tdata.split(td, val_fraction, seed)
    require("lightning")
    work = loaded if in_place else copy_loaded(loaded)
    initial = evaluate(work, val_data, batch_size, device=pick_device(device))
    out = fit(
        work,
        train_data,
        val_data,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_steps=warmup_steps,
        max_steps=max_steps,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        device=device,
        seed=seed,
        callbacks=callbacks,
        checkpoint_every_n_steps=checkpoint_every_n_steps,
        progress=progress,
    )
    final = evaluate(work, val_data, batch_size, device=pick_device(device))
    epochs_df = pd.DataFrame(out.history.epochs, columns=["epoch", "step", "train_loss", "val_loss", "val_ppl"])
    vals = [v for v in epochs_df["val_loss"].tolist() if v == v] + [final]
    notes = list(td.notes) + [f"train {len(train_data)} blocks, validation {len(val_data)} blocks of {block} tokens"]
    ckpts = sorted(out.checkpoint_dir.glob("*.ckpt"))
    work.module.eval()
    return TrainResult(
        model=work.module,
        metrics=epochs_df,
        checkpoints=ckpts,
        best_val_loss=min(vals),
        synthetic=td.synthetic,
        step_metrics=pd.DataFrame(out.history.steps, columns=["step", "train_loss", "lr"]),
        global_step=int(out.trainer.global_step),
        final_val_loss=final,
        initial_val_loss=initial,
        resumed_from=out.resumed_from,
        resumed_step=out.resumed_step,
        precision=out.precision,
        data_description=td.description,
        notes=notes,
        loaded=work,
    )


def loss_curve_figure(result: TrainResult, title: str = "training loss"):
    """A matplotlib Figure (no pyplot): per-step train loss and per-epoch validation loss."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    steps = result.step_metrics
    if steps is not None and len(steps):
        ax.plot(steps["step"], steps["train_loss"], lw=1, alpha=0.8, label="train (per step)")
    m = result.metrics.dropna(subset=["val_loss"]) if len(result.metrics) else result.metrics
    if len(m):
        ax.plot(m["step"], m["val_loss"], "o-", label="validation (per epoch)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title + (" [SYNTHETIC DATA]" if result.synthetic else ""))
    ax.legend()
    fig.tight_layout()
    return fig
