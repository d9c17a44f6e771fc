"""What a training run and a search are asked to do, as two dataclasses.

``tbkit.train(model, data, epochs=2, lr=3e-4)`` and ``tbkit.search(...)`` keep their keyword
arguments: each call builds its config from them (``from_options``), and an unknown keyword is one
paragraph naming the valid ones. Inside the package the config travels whole, so a new option is
one field here instead of a keyword threaded through every function.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, TypeVar

from tbkit.errors import UsageError

C = TypeVar("C", "TrainConfig", "SearchConfig")


def from_options(cls: type[C], config: Optional[C], options: dict[str, Any]) -> C:
    """``config`` (or the defaults) with ``options`` set over it; UsageError on an unknown name."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise UsageError(
            f"{', '.join(map(repr, unknown))} {'is not an option' if len(unknown) == 1 else 'are not options'} "
            f"of {cls.__name__}",
            f"Valid options are {', '.join(names)}.",
        )
    return dataclasses.replace(config if config is not None else cls(), **options)


@dataclass(frozen=True)
class TrainConfig:
    """How ``tbkit.train`` (and the engine under search trials and ``baseline``) trains.

    ``batch_size`` is the global batch (``devices * num_nodes`` processes share it); ``precision``
    overrides the automatic choice (training/precision.py); ``checkpoint_dir`` None = a temporary
    folder; ``resume`` resumes from a ``last.ckpt`` there."""

    epochs: int = 3
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 0
    max_len: Optional[int] = None
    val_fraction: float = 0.1
    checkpoint_dir: Any = None
    resume: bool = True
    synthetic: bool = False
    device: Any = None
    seed: int = 0
    in_place: bool = False
    max_steps: Optional[int] = None
    checkpoint_every_n_steps: Optional[int] = None
    tokenizer_level: str = "char"
    callbacks: Any = ()
    progress: bool = False
    kind: Optional[str] = None
    devices: Optional[int] = None
    strategy: Optional[str] = None
    num_nodes: Optional[int] = None
    precision: Optional[str] = None

    def check(self) -> None:
        for name, value in (("epochs", self.epochs), ("batch_size", self.batch_size)):
            if int(value) < 1:
                raise UsageError(f"{name}={value} must be 1 or more", f"Pass {name}=1 or more.")
        if not self.lr > 0:
            raise UsageError(f"lr={self.lr} must be positive", "Pass e.g. lr=1e-3.")


@dataclass(frozen=True)
class SearchConfig:
    """How ``tbkit.search`` searches (training/search.py and workers.py say what each part does).

    ``n_trials`` is the study's total over all workers; ``search_space`` overrides ranges
    (``{"lr": (1e-4, 3e-3, "log"), "dropout": None}``, None drops one); ``heartbeat`` (s; default
    60 with an RDB ``storage``, 0: off), ``grace_period`` (default twice that), ``max_retry``
    (default 3) handle dead workers."""

    n_trials: int = 20
    storage: Optional[str] = None
    study_name: Optional[str] = None
    worker: bool = False
    timeout: Optional[float] = None
    epochs: int = 3
    batch_size: int = 16
    max_len: Optional[int] = None
    val_fraction: float = 0.1
    synthetic: bool = False
    seed: int = 0
    device: Any = None
    search_space: Optional[dict[str, Optional[tuple[float, float, str]]]] = None
    kind: Optional[str] = None
    n_startup_trials: int = 3
    tokenizer_level: str = "char"
    heartbeat: Optional[int] = None
    grace_period: Optional[int] = None
    max_retry: Optional[int] = None

    def check(self) -> None:
        if int(self.n_trials) < 1:
            raise UsageError(f"n_trials={self.n_trials} must be 1 or more", "Pass n_trials=1 or more.")
        if int(self.epochs) < 1:
            raise UsageError(
                f"epochs={self.epochs} must be 1 or more", "Pass epochs=1 or more (pruning acts per epoch)."
            )

    def trial(self, *, lr: float, weight_decay: float, warmup_steps: int, seed: int) -> TrainConfig:
        """The training run of one trial (no checkpoints: a trial's result is its validation loss)."""
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=lr,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            device=self.device,
            seed=seed,
        )
