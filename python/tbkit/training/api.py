"""The public entry points of training: ``tbkit.train`` (here), ``tbkit.search`` (search.py) and the
one-batch memorisation under the ``overfit`` check (memorise.py).

``train`` fine-tunes a causal LM on the user's data with the shared fit loop (fit.py). The caller's
model is never touched unless ``in_place=True``: training runs on a copy (copies.py). lightning
comes through the install gate when missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tbkit.errors import UsageError
from tbkit.sources.coerce import as_loaded
from tbkit.sources.loaded import LoadedModel
from tbkit.training.config import SearchConfig, TrainConfig, from_options
from tbkit.training.copies import copy_loaded
from tbkit.training.data import TokenData, training_data
from tbkit.training.dependencies import require
from tbkit.training.evaluation import evaluate
from tbkit.training.fit import FitOutcome, fit
from tbkit.training.memorise import memorise
from tbkit.training.plots import loss_curve_figure
from tbkit.training.run_setup import run_setup
from tbkit.training.search import SearchResult, search

__all__ = [
    "train",
    "search",
    "memorise",
    "TrainConfig",
    "SearchConfig",
    "TrainResult",
    "SearchResult",
    "loss_curve_figure",
]

# why no torch.compile: compiling takes tens of seconds, more than runs of a few hundred steps save,
# and notebook models often break the graph; AMP (precision.py) is what pays on a GPU.
# benchmarks/bench_compile.py measures it (fresh compile cache): on 2 CPU cores the bundled
# example's step went 20.1 -> 18.1 ms after 18.5 s of compiling (pays after about 9,000 steps),
# the 7 M decoder's 356 -> 371 ms after 25.6 s (never pays)
EXECUTION = "eager (torch.compile not used: compiling costs more than runs this short save)"


@dataclass
class TrainResult:
    model: Any  # the trained nn.Module (the caller's own object only with in_place=True)
    metrics: Any  # pandas DataFrame, one row per epoch: epoch, step, train_loss, val_loss, val_ppl
    checkpoints: list[Path]  # Paths of the checkpoint files written
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
    notes: list[str] = field(default_factory=list)
    loaded: Any = None  # the LoadedModel around ``model``
    precision_reason: str = ""
    distribution: str = "1 device"  # how the run was spread (distributed.Plan.describe)
    is_global_zero: bool = True  # report only where this is True (torchrun starts one train() per rank)
    execution: str = EXECUTION

    def summary(self) -> str:
        lines = [
            f"trained on {self.data_description}" + (" [SYNTHETIC]" if self.synthetic else ""),
            f"{self.global_step} steps on {self.distribution}, precision {self.precision}"
            + (f" ({self.precision_reason})" if self.precision_reason else "")
            + f", {self.execution}"
            + f"; best val loss {self.best_val_loss:.4f} (perplexity {math.exp(min(self.best_val_loss, 50)):.2f}), "
            f"final {self.final_val_loss:.4f}",
        ]
        if self.resumed_from is not None:
            lines.append(f"resumed from {self.resumed_from} at step {self.resumed_step}")
        lines += self.notes
        return "\n".join(lines)


def train(model_or_source: Any, data: Any = None, config: Optional[TrainConfig] = None, **options: Any) -> TrainResult:
    """Fine-tune a causal LM on ``data`` (a text file path, or token ids (N, T) / a 1-D stream).

    Options: ``config`` (a TrainConfig) and/or its fields as keywords (``epochs=2, lr=3e-4``).
    A copy unless ``in_place=True``; synthetic data only with ``synthetic=True``. Checkpoints go
    to ``checkpoint_dir`` (a temporary folder when None); ``resume=True`` resumes from a ``last.ckpt``
    there. ``devices``/``num_nodes``/``strategy``: DDP over several processes, ``batch_size`` stays
    the global batch. ``precision`` overrides the automatic choice (see training/precision.py)."""
    cfg = from_options(TrainConfig, config, options)
    cfg.check()
    loaded = as_loaded(model_or_source, cfg.kind)
    _check_decoder(loaded)
    td, train_data, val_data, block = training_data(
        loaded,
        data,
        max_len=cfg.max_len,
        val_fraction=cfg.val_fraction,
        synthetic=cfg.synthetic,
        seed=cfg.seed,
        level=cfg.tokenizer_level,
    )
    require("lightning")
    setup = run_setup(cfg, loaded.module)
    # with forked workers CUDA must stay untouched here: evaluate in this process on the CPU
    eval_device = "cpu" if setup.plan.forks else setup.device
    work = loaded if cfg.in_place else copy_loaded(loaded)
    initial = evaluate(work, val_data, cfg.batch_size, device=eval_device)
    out = fit(work, train_data, val_data, cfg, setup=setup)
    notes = list(td.notes) + [f"train {len(train_data)} blocks, validation {len(val_data)} blocks of {block} tokens"]
    final = evaluate(work, val_data, cfg.batch_size, device=eval_device)
    return _train_result(work, out, td, notes, initial, final)


def _check_decoder(loaded: LoadedModel) -> None:
    if loaded.kind != "decoder":
        raise UsageError(
            f"tbkit.train trains causal language models; this model's kind is {loaded.kind} ({loaded.kind_reason})",
            "Pass a decoder, or declare kind='decoder' if it is one.",
        )


def _train_result(
    work: LoadedModel, out: FitOutcome, td: TokenData, notes: list[str], initial: float, final: float
) -> TrainResult:
    import pandas as pd

    epochs_df = pd.DataFrame(out.history.epochs, columns=["epoch", "step", "train_loss", "val_loss", "val_ppl"])
    vals = [v for v in epochs_df["val_loss"].tolist() if v == v] + [final]
    work.module.eval()
    return TrainResult(
        model=work.module,
        metrics=epochs_df,
        checkpoints=sorted(out.checkpoint_dir.glob("*.ckpt")) if out.checkpoint_dir else [],
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
