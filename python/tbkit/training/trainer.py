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
    """The same LoadedModel facts around another module (a deep copy unless one is given).

    A deep copy can lie: a function stored on a module (minGPT's ``self.mlpf = lambda x:
    m.c_proj(...)``) is copied by reference, so the copy's forward still runs the ORIGINAL's
    submodules; training the copy would leave those weights untrained and put gradients on the
    caller's model. Such a model is refused with the way out before anything is copied."""
    if module is None:
        refuse_lying_copies(loaded.module)
        module = copy.deepcopy(loaded.module)
    new = dataclasses.replace(loaded, module=module)
    new.__dict__.pop("_params_cache", None)
    return new


def refuse_lying_copies(module, way_out: str = "Pass in_place=True to train the model itself") -> None:
    leaks = closures_over_own_submodules(module)
    if leaks:
        raise UsageError(
            f"a copy of this model would still run the original's {', '.join(leaks[:5])} "
            "(a function stored on a module closes over the original submodule, e.g. "
            "self.mlpf = lambda x: m.c_proj(...)), so training the copy would not train it",
            f"{way_out}, or call the submodule from a method instead of a stored lambda.",
        )


def closures_over_own_submodules(model) -> list:
    """Names of ``model``'s submodules that functions stored on its modules close over.

    ``copy.deepcopy`` copies functions by reference (bound methods and ``functools.partial``
    arguments it does copy), so in a copy these closures still reach the original's submodules."""
    import functools

    names = {id(m): n or "(model)" for n, m in model.named_modules()}

    def closed_over(fn, depth=0):
        if isinstance(fn, functools.partial):
            fn = fn.func
        for cell in getattr(fn, "__closure__", None) or ():
            with contextlib.suppress(ValueError):  # an empty cell
                value = cell.cell_contents
                if id(value) in names:
                    yield names[id(value)]
                elif depth < 2 and callable(value):  # a closure calling another closure
                    yield from closed_over(value, depth + 1)

    found: list = []
    for sub in model.modules():
        for key, value in vars(sub).items():
            if not key.startswith("_") and callable(value):
                found += [n for n in closed_over(value) if n not in found]
    return found


def pick_device(device=None):
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def precision_for(device, requested: Optional[str] = None) -> str:
    """AMP on GPU only: bf16 where the GPU supports it, else fp16 with loss scaling; fp32 on CPU
    (the decision itself: ``tbkit.training.precision.choose_precision``)."""
    from tbkit.training.precision import choose_precision, device_capabilities

    return choose_precision(device_capabilities(device), requested).precision


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
            # train_loss is logged already averaged over the processes (engine.CausalLM.training_step)
            warnings.filterwarnings("ignore", message=r".*sync_dist=True.*when logging on epoch level.*")
            if resuming:  # a folder holding checkpoints is the point of resuming
                warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@dataclass
class FitOutcome:
    trainer: Any
    history: Any  # engine.History: epochs, steps, global_step
    checkpoint_dir: Optional[Path]  # None when no checkpoints were kept
    resumed_from: Optional[Path]
    resumed_step: Optional[int]
    setup: Any  # RunSetup: device, distributed.Plan, precision.PrecisionChoice
    global_step: int = 0
    is_global_zero: bool = True  # False in the other ranks of a torchrun-launched run

    @property
    def precision(self) -> str:
        return self.setup.precision.precision

    @property
    def precision_reason(self) -> str:
        return self.setup.precision.reason

    @property
    def plan(self):
        return self.setup.plan


@dataclass(frozen=True)
class RunSetup:
    """Where and how a run trains: the device, the multi-device plan, the precision."""

    device: Any  # torch.device of this process
    plan: Any  # distributed.Plan
    precision: Any  # precision.PrecisionChoice


def run_setup(device=None, devices=None, num_nodes=None, strategy=None, batch_size=16, precision=None) -> RunSetup:
    """Check the device, multi-device and precision arguments together; UsageError when they clash."""
    import os

    import torch

    from tbkit.training import distributed
    from tbkit.training.precision import choose_precision, device_capabilities

    device = pick_device(device)
    plan = distributed.plan(devices, num_nodes, strategy, batch_size)
    if plan.world > 1 and device.type not in ("cpu", "cuda"):
        raise UsageError(
            f"training on several {device.type} devices is not supported", "Use devices=1, or CPU/CUDA devices."
        )
    if plan.world > 1 and device.type == "cuda" and distributed.launched_externally():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))  # torchrun: one GPU per rank
    if plan.forks and device.type == "cuda" and torch.cuda.is_initialized():
        raise UsageError(
            f"CUDA is already initialised in this process, so Lightning cannot fork the {plan.world} DDP workers",
            "Restart the kernel and call tbkit.train(devices=N) before anything else uses the GPU, or run a "
            "script under torchrun (docs/tier3.md shows how).",
        )
    caps = device_capabilities(device, fork_safe=plan.forks)
    return RunSetup(device, plan, choose_precision(caps, precision))


def _checkpointing(save: bool, checkpoint_dir, every_n_steps: Optional[int]):
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


def _resume_point(resume: bool, ckdir: Optional[Path]):
    """(last.ckpt to resume from or None, its global step)."""
    import torch

    path = ckdir / "last.ckpt" if (resume and ckdir is not None) else None
    if path is None or not path.is_file():
        return None, None
    state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)  # mmap: no full copy
    step = int(state.get("global_step", 0))
    del state
    return path, step


def _make_trainer(setup: RunSetup, *, epochs, max_steps, callbacks, save_checkpoints, progress, resuming):
    import lightning.pytorch as pl

    cuda = setup.device.type == "cuda"
    single = setup.plan.world == 1
    with quiet_lightning(resuming=resuming):
        return pl.Trainer(
            max_epochs=epochs,
            max_steps=max_steps if max_steps else -1,
            accelerator="gpu" if cuda else "cpu",
            devices=([setup.device.index or 0] if cuda else 1) if single else setup.plan.devices,
            num_nodes=setup.plan.num_nodes,
            strategy=setup.plan.strategy,
            use_distributed_sampler=False,  # engine.EpochSampler splits the data itself
            precision=setup.precision.precision,
            gradient_clip_val=1.0,
            logger=False,
            callbacks=callbacks,
            enable_checkpointing=save_checkpoints,
            enable_progress_bar=progress,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            deterministic=False,
        )


def _run(trainer, lit, setup: RunSetup, seed: int, resume_path: Optional[Path]) -> None:
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
    devices: Optional[int] = None,
    strategy: Optional[str] = None,
    num_nodes: Optional[int] = None,
    precision: Optional[str] = None,
    setup: Optional[RunSetup] = None,
) -> FitOutcome:
    """Train ``loaded.module`` in place with Lightning. The shared engine of train, search and baseline.

    ``batch_size`` is the global batch; with ``devices * num_nodes > 1`` each process takes its share."""
    setup = setup or run_setup(device, devices, num_nodes, strategy, batch_size, precision)
    lit = _lightning_module(
        loaded, train_data, val_data, setup, epochs, max_steps, lr, weight_decay, warmup_steps, seed
    )
    with tempfile.TemporaryDirectory(prefix="tbkit-fit-") as scratch:
        from tbkit.training.engine import History

        # forked workers: process 0 hands the history back through a file (only the parent returns)
        history = History(Path(scratch) / "history.json" if setup.plan.forks else None)
        ckdir, checkpoints = _checkpointing(save_checkpoints, checkpoint_dir, checkpoint_every_n_steps)
        resume_path, resumed_step = _resume_point(resume and save_checkpoints, ckdir)
        trainer = _make_trainer(
            setup,
            epochs=epochs,
            max_steps=max_steps,
            callbacks=[history, *callbacks, *checkpoints],
            save_checkpoints=save_checkpoints,
            progress=progress,
            resuming=resume_path is not None,
        )
        _run(trainer, lit, setup, seed, resume_path)
        if setup.plan.forks and not history.load_export():
            raise TbkitError(
                f"the {setup.plan.world} training processes ended without reporting their results",
                "Run again with devices=1 to see the error in this process.",
            )
    outcome = FitOutcome(trainer, history, ckdir, resume_path, resumed_step, setup, history.global_step)
    outcome.is_global_zero = bool(trainer.is_global_zero)
    return outcome


def _lightning_module(loaded, train_data, val_data, setup, epochs, max_steps, lr, weight_decay, warmup_steps, seed):
    from tbkit.training.engine import CausalLM

    per_epoch = math.ceil((len(train_data) // setup.plan.world) / setup.plan.per_device_batch)
    total = min(max_steps, epochs * per_epoch) if max_steps else epochs * per_epoch
    return CausalLM(
        loaded,
        train_data,
        val_data,
        lr=lr,
        weight_decay=weight_decay,
        warmup_steps=warmup_steps,
        total_steps=total,
        batch=setup.plan.per_device_batch,
        seed=seed,
    )


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
    precision_reason: str = ""
    distribution: str = "1 device"  # how the run was spread (distributed.Plan.describe)
    is_global_zero: bool = True  # report only where this is True (torchrun starts one train() per rank)

    def summary(self) -> str:
        lines = [
            f"trained on {self.data_description}" + (" [SYNTHETIC]" if self.synthetic else ""),
            f"{self.global_step} steps on {self.distribution}, precision {self.precision}"
            + (f" ({self.precision_reason})" if self.precision_reason else "")
            + f"; best val loss {self.best_val_loss:.4f} (perplexity {math.exp(min(self.best_val_loss, 50)):.2f}), "
            f"final {self.final_val_loss:.4f}",
        ]
        if self.resumed_from is not None:
            lines.append(f"resumed from {self.resumed_from} at step {self.resumed_step}")
        lines += self.notes
        return "\n".join(lines)


def training_data(loaded, data, *, max_len, val_fraction, synthetic, seed, level):
    """(TokenData, train split, validation split, block length) for ``loaded`` from what the user gave."""
    from tbkit.training import data as tdata

    block = block_length(loaded, max_len)
    td = tdata.prepare(
        data,
        vocab_size=loaded.vocab_size,
        block_len=block,
        pad_id=loaded.pad_token_id,
        synthetic=synthetic,
        seed=seed,
        level=level,
    )
    train_data, val_data = tdata.split(td, val_fraction, seed)
    return td, train_data, val_data, block


def _check_train_args(loaded, epochs, batch_size, lr) -> None:
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if int(value) < 1:
            raise UsageError(f"{name}={value} must be 1 or more", f"Pass {name}=1 or more.")
    if not lr > 0:
        raise UsageError(f"lr={lr} must be positive", "Pass e.g. lr=1e-3.")
    if loaded.kind != "decoder":
        raise UsageError(
            f"tbkit.train trains causal language models; this model's kind is {loaded.kind} ({loaded.kind_reason})",
            "Pass a decoder, or declare kind='decoder' if it is one.",
        )


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
    devices: Optional[int] = None,
    strategy: Optional[str] = None,
    num_nodes: Optional[int] = None,
    precision: Optional[str] = None,
) -> TrainResult:
    """Fine-tune a causal LM on ``data`` (a text file path, or token ids (N, T) / a 1-D stream).

    A deep copy unless ``in_place=True``; synthetic data only with ``synthetic=True``. Checkpoints go
    to ``checkpoint_dir`` (a temporary folder when None); ``resume=True`` resumes from a ``last.ckpt``
    there. ``devices``/``num_nodes``/``strategy``: DDP over several processes, ``batch_size`` stays
    the global batch. ``precision`` overrides the automatic choice (see training/precision.py)."""
    loaded = as_loaded(model_or_source, kind)
    _check_train_args(loaded, epochs, batch_size, lr)
    td, train_data, val_data, block = training_data(
        loaded, data, max_len=max_len, val_fraction=val_fraction, synthetic=synthetic, seed=seed, level=tokenizer_level
    )
    require("lightning")
    setup = run_setup(device, devices, num_nodes, strategy, batch_size, precision)
    # with forked workers CUDA must stay untouched here: evaluate in this process on the CPU
    eval_device = "cpu" if setup.plan.forks else setup.device
    work = loaded if in_place else copy_loaded(loaded)
    initial = evaluate(work, val_data, batch_size, device=eval_device)
    # fit's options, grouped so this function stays a readable list of steps
    options = dict(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps)
    options.update(max_steps=max_steps, checkpoint_dir=checkpoint_dir, resume=resume, seed=seed, callbacks=callbacks)
    options.update(checkpoint_every_n_steps=checkpoint_every_n_steps, progress=progress, setup=setup)
    out = fit(work, train_data, val_data, **options)
    notes = list(td.notes) + [f"train {len(train_data)} blocks, validation {len(val_data)} blocks of {block} tokens"]
    return _train_result(work, out, td, notes, initial, evaluate(work, val_data, batch_size, device=eval_device))


def _train_result(work, out: FitOutcome, td, notes: list, initial: float, final: float) -> TrainResult:
    import pandas as pd

    epochs_df = pd.DataFrame(out.history.epochs, columns=["epoch", "step", "train_loss", "val_loss", "val_ppl"])
    vals = [v for v in epochs_df["val_loss"].tolist() if v == v] + [final]
    work.module.eval()
    return TrainResult(
        model=work.module,
        metrics=epochs_df,
        checkpoints=sorted(out.checkpoint_dir.glob("*.ckpt")),
        best_val_loss=min(vals),
        synthetic=td.synthetic,
        step_metrics=pd.DataFrame(out.history.steps, columns=["step", "train_loss", "lr"]),
        global_step=out.global_step,
        final_val_loss=final,
        initial_val_loss=initial,
        resumed_from=out.resumed_from,
        resumed_step=out.resumed_step,
        precision=out.precision,
        data_description=td.description,
        notes=notes,
        loaded=work,
        precision_reason=out.precision_reason,
        distribution=out.plan.describe(),
        is_global_zero=out.is_global_zero,
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
