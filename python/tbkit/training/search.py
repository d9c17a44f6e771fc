"""`tbkit.search`: hyperparameter search with Optuna, trials trained by the shared Lightning engine.

- Sampler: TPE. Pruner: MedianPruner, fed once per epoch by
  ``optuna_integration.PyTorchLightningPruningCallback`` on ``val_loss``.
- Storage: in memory (default), a SQLite file (``sqlite:///study.db``), or any Optuna RDB URL such
  as ``postgresql://user@host/db``: then several processes on several machines work ONE study;
  ``worker=True`` joins a study that must already exist.
- ``n_trials`` is the study's total over all workers. Each worker asks for a trial only while
  fewer than ``n_trials`` trials fill the study's slots; trial numbers are handed out by the
  storage under a row lock, so a worker that loses the race for the last slot sees it, does not
  run that trial, and records it as FAIL with user attribute ``tbkit_surplus`` (never silent).
- Dead workers: with an RDB storage, Optuna's heartbeat marks a trial whose worker went silent as
  FAIL and its retry callback queues the same parameters again; see ``training/workers.py``.
- Searched: ``lr`` (log), ``weight_decay`` (log), ``warmup_frac`` (share of the steps that the
  scheduler really warms up over), and ``dropout`` only when the model has dropout to set (a
  factory taking ``dropout=``, or ``nn.Dropout`` modules).

optuna, optuna-integration and lightning come through the install gate when missing; optuna is
imported inside the functions that use it, after the gate (``import tbkit`` stays light).
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import os
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Union, cast

from tbkit.errors import TbkitError, UsageError
from tbkit.sources.coerce import as_loaded
from tbkit.sources.loaded import LoadedModel
from tbkit.training import workers
from tbkit.training.config import SearchConfig, from_options
from tbkit.training.copies import copy_loaded, refuse_lying_copies
from tbkit.training.data import TokenData, training_data
from tbkit.training.dependencies import require
from tbkit.training.fit import fit
from tbkit.training.plots import history_figure, importance_figure

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure
    from optuna.storages import RDBStorage
    from optuna.trial import TrialState

# a searched parameter: (low, high, "log" | "linear")
Range = tuple[float, float, str]
# a trial's parameters -> the model it trains
ModelMaker = Callable[[dict[str, float]], LoadedModel]

DEFAULT_SPACE: dict[str, Range] = {
    "lr": (1e-4, 1e-2, "log"),
    "weight_decay": (1e-5, 0.3, "log"),
    "warmup_frac": (0.0, 0.3, "linear"),
    "dropout": (0.0, 0.3, "linear"),
}


@dataclass
class SearchResult:
    study: optuna.Study
    trials_df: Any  # pandas DataFrame (study.trials_dataframe())
    best_params: dict[str, Any]
    figures: dict[str, Figure]  # name -> matplotlib Figure (history, importance)
    best_value: float = float("nan")
    n_complete: int = 0
    n_pruned: int = 0
    n_failed: int = 0
    synthetic: bool = False
    storage_display: str = "in memory"
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # messages of trials that crashed (this worker)
    trials_run_here: int = 0
    n_retried: int = 0  # trials that re-ran the parameters of a trial whose worker died
    retries: list[str] = field(default_factory=list)  # one line per retry (and per dead trial not retried): why
    heartbeat: str = "no heartbeat"

    def summary(self) -> str:
        lines = [
            f"study {self.study.study_name!r} ({self.storage_display}): {self.n_complete} completed, "
            f"{self.n_pruned} pruned, {self.n_failed} failed; this process ran {self.trials_run_here}"
        ]
        if self.n_complete:
            lines.append(f"best val loss {self.best_value:.4f} with {self.best_params}")
        if self.synthetic:
            lines.append("SYNTHETIC data (asked for)")
        if self.n_retried or self.heartbeat != "no heartbeat":
            lines.append(f"{self.n_retried} trial(s) retried after their worker died; {self.heartbeat}")
        lines += [f"retry: {r}" for r in self.retries[:5]]
        lines += self.notes + [f"failure: {f}" for f in self.failures[:3]]
        return "\n".join(lines)


def display_url(url: Optional[str]) -> str:
    """A storage URL safe to print: the password, if any, is hidden."""
    if url is None:
        return "in memory"
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable: show only the scheme
        return url.split(":", 1)[0] + "://…"


def _with_driver(url: Optional[str]) -> Optional[str]:
    """``postgresql://`` names no driver and SQLAlchemy 2.1 then picks psycopg 3; use whichever
    PostgreSQL driver is installed (psycopg2 first: the one tbkit's extras list), installing
    psycopg2-binary through the gate when there is none."""
    if url is None or not (url.startswith("postgresql://") or url.startswith("postgres://")):
        return url
    rest = url.split("://", 1)[1]
    if importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + rest
    if importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg://" + rest
    require("psycopg2-binary")
    return "postgresql+psycopg2://" + rest


def _open_study(
    storage: Optional[str],
    study_name: str,
    worker: bool,
    seed: int,
    n_startup: int,
    hb: Optional[workers.Heartbeat] = None,
) -> optuna.Study:
    import optuna

    sampler = optuna.samplers.TPESampler(seed=None if worker else seed, n_startup_trials=n_startup)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    shown = display_url(storage)
    storage = _with_driver(storage)
    try:
        target: Union[str, RDBStorage, None] = workers.rdb_storage(storage, hb) if storage is not None else None
        if worker:
            if target is None:
                raise UsageError(
                    "worker=True joins a study kept in a shared storage, but no storage was given",
                    "Pass storage='postgresql://…' (CLI: --storage URL) naming the study's database.",
                )
            try:
                return optuna.load_study(study_name=study_name, storage=target, sampler=sampler, pruner=pruner)
            except KeyError:
                raise UsageError(
                    f"there is no study named {study_name!r} in {shown} to join",
                    "Start it first without --worker (or worker=False), or check --study.",
                ) from None
        return optuna.create_study(
            study_name=study_name,
            storage=target,
            sampler=sampler,
            pruner=pruner,
            direction="minimize",
            load_if_exists=True,
        )
    except TbkitError:
        raise
    except Exception as err:  # SQLAlchemy / driver errors: one paragraph, password hidden
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise TbkitError(
            f"could not open the Optuna storage {shown}: {type(err).__name__}: {first}",
            "Check the URL, that the database server runs and accepts this user, and that the database exists.",
        ) from None


def _model_maker(model_factory_or_source: Any, kind: Optional[str]) -> tuple[ModelMaker, bool, Optional[LoadedModel]]:
    """(make(params) -> LoadedModel, takes_dropout: bool, base LoadedModel or None)."""
    import torch.nn as nn

    obj = model_factory_or_source
    if callable(obj) and not isinstance(obj, (nn.Module, LoadedModel)) and not isinstance(obj, type):
        try:
            sig = inspect.signature(obj)
            takes = "dropout" in sig.parameters or any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
        except (TypeError, ValueError):
            takes = False

        def make(params: dict[str, float]) -> LoadedModel:
            kwargs = {"dropout": params["dropout"]} if takes and "dropout" in params else {}
            return as_loaded(obj(**kwargs), kind)

        return make, takes, None
    base = as_loaded(obj, kind)
    # every trial trains a copy: refuse before the study starts
    refuse_lying_copies(base.module, "Pass a function that builds a fresh model (tbkit.search(lambda: MyModel(), ...))")
    has_dropout = any(isinstance(m, nn.Dropout) for m in base.module.modules())

    def make_copy(params: dict[str, float]) -> LoadedModel:
        lm = copy_loaded(base)
        if "dropout" in params:
            for m in lm.module.modules():
                if isinstance(m, nn.Dropout):
                    m.p = float(params["dropout"])
        return lm

    return make_copy, has_dropout, base


@dataclass
class _Setup:
    """What every trial of this process shares: the model maker, the data, the searched space."""

    make: ModelMaker
    td: TokenData
    train_data: TokenData
    val_data: TokenData
    space: dict[str, Range]
    notes: list[str]


def _prepare(model_factory_or_source: Any, data: Any, cfg: SearchConfig) -> _Setup:
    make, dropout_ok, base = _model_maker(model_factory_or_source, cfg.kind)
    probe = base if base is not None else make({})
    if probe.kind != "decoder":
        raise UsageError(
            f"tbkit.search trains causal language models; this model's kind is {probe.kind}",
            "Pass a decoder, or declare kind='decoder' if it is one.",
        )
    td, train_data, val_data, _ = training_data(
        probe,
        data,
        max_len=cfg.max_len,
        val_fraction=cfg.val_fraction,
        synthetic=cfg.synthetic,
        seed=cfg.seed,
        level=cfg.tokenizer_level,
    )
    space: dict[str, Optional[Range]] = dict(DEFAULT_SPACE)
    space.update(cfg.search_space or {})
    notes = list(td.notes)
    if not dropout_ok and space.get("dropout") is not None:
        space["dropout"] = None
        notes.append("dropout not searched: the model has no nn.Dropout and its factory takes no dropout=")
    searched = {k: v for k, v in space.items() if v is not None}
    return _Setup(make, td, train_data, val_data, searched, notes)


def _objective(setup: _Setup, cfg: SearchConfig) -> Callable[[optuna.Trial], float]:
    """The function Optuna calls per trial: suggest, train a fresh model, return the best val loss."""
    from optuna_integration import PyTorchLightningPruningCallback

    total_steps = math.ceil(len(setup.train_data) / cfg.batch_size) * cfg.epochs
    worker_id = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: optuna.Trial) -> float:
        params: dict[str, float] = {}
        for key, (low, high, scale) in setup.space.items():
            params[key] = trial.suggest_float(key, low, high, log=(scale == "log"))
        warmup = int(round(params.get("warmup_frac", 0.0) * total_steps))
        trial.set_user_attr("warmup_steps", warmup)  # what the scheduler was given
        trial.set_user_attr("worker", worker_id)  # which process ran it (several may share a study)
        run = cfg.trial(
            lr=params.get("lr", 1e-3),
            weight_decay=params.get("weight_decay", 0.0),
            warmup_steps=warmup,
            seed=cfg.seed + trial.number,
        )
        pruning = PyTorchLightningPruningCallback(trial, monitor="val_loss")
        out = fit(
            setup.make(params), setup.train_data, setup.val_data, run, callbacks=(pruning,), save_checkpoints=False
        )
        vals = [r["val_loss"] for r in out.history.epochs if "val_loss" in r]
        if not vals or not all(math.isfinite(v) for v in vals):
            raise FloatingPointError(f"validation loss not finite: {vals}")
        return min(vals)

    return objective


def search(
    model_factory_or_source: Any, data: Any = None, config: Optional[SearchConfig] = None, **options: Any
) -> SearchResult:
    """Search lr / weight decay / warmup (/ dropout) for a causal LM; minimises validation loss.

    ``model_factory_or_source``: a callable returning a fresh model (called once per trial, with
    ``dropout=`` when it takes it), or a model / LoadedModel / source (each trial trains a copy).
    Options: ``config`` (a SearchConfig) and/or its fields as keywords (``n_trials=6, storage=…``);
    ``search_space`` overrides ranges: ``{"lr": (1e-4, 3e-3, "log"), "dropout": None, …}`` (None
    drops a parameter). ``heartbeat`` (s; default 60 with an RDB ``storage``, 0: off), ``grace_period``
    (default twice that), ``max_retry`` (default 3): dead workers' trials, see training/workers.py."""
    cfg = from_options(SearchConfig, config, options)
    cfg.check()
    hb = workers.heartbeat_settings(cfg.storage, cfg.heartbeat, cfg.grace_period, cfg.max_retry)
    require("optuna", "optuna-integration", "lightning")
    import optuna

    setup = _prepare(model_factory_or_source, data, cfg)
    objective = _objective(setup, cfg)
    notes = setup.notes
    failures: list[str] = []
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not one INFO line per trial; restored after
    try:
        study = _open_study(
            cfg.storage, cfg.study_name or "tbkit-search", cfg.worker, cfg.seed, cfg.n_startup_trials, hb
        )
        ran = _work(study, objective, cfg.n_trials, cfg.timeout, notes, failures, hb)
    finally:
        optuna.logging.set_verbosity(previous)
    return _result(study, setup, cfg.storage, hb, notes, failures, ran)


def _result(
    study: optuna.Study,
    setup: _Setup,
    storage: Optional[str],
    hb: Optional[workers.Heartbeat],
    notes: list[str],
    failures: list[str],
    ran: int,
) -> SearchResult:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    by_state = {
        s: [t for t in trials if t.state == s] for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    }
    complete = by_state[TrialState.COMPLETE]  # a COMPLETE trial has its value
    best = min(complete, key=lambda t: cast(float, t.value)) if complete else None
    figures = {"history": history_figure(study, synthetic=setup.td.synthetic)} if trials else {}
    imp_fig, imp_note = importance_figure(study)
    if imp_fig is not None:
        figures["importance"] = imp_fig
    if imp_note:
        notes.append(imp_note)
    return SearchResult(
        study=study,
        trials_df=study.trials_dataframe(),
        best_params=dict(best.params) if best else {},
        figures=figures,
        best_value=float(cast(float, best.value)) if best else float("nan"),
        n_complete=len(complete),
        n_pruned=len(by_state[TrialState.PRUNED]),
        n_failed=len(by_state[TrialState.FAIL]),
        synthetic=setup.td.synthetic,
        storage_display=display_url(storage),
        notes=notes,
        failures=failures,
        trials_run_here=ran,
        n_retried=sum(1 for t in trials if t.system_attrs.get("retry_history")),
        retries=workers.retry_report(trials, hb),
        heartbeat=hb.describe() if hb is not None else "no heartbeat",
    )


def _work(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    n_trials: int,
    timeout: Optional[float],
    notes: list[str],
    failures: list[str],
    hb: Optional[workers.Heartbeat] = None,
) -> int:
    """Run trials until the study's ``n_trials`` slots are filled (over all workers) or ``timeout``
    passes; returns how many this process ran."""
    deadline = None if timeout is None else time.monotonic() + timeout
    ran = 0
    while True:
        trial = workers.next_trial(study, n_trials, hb, deadline)
        if trial is None:
            break
        ran += 1
        _run_trial(study, trial, objective, failures, hb, notes)
    if deadline is not None and time.monotonic() >= deadline:
        notes.append(f"stopped by the timeout of {timeout} s")
    return ran


def _run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    objective: Callable[[optuna.Trial], float],
    failures: list[str],
    hb: Optional[workers.Heartbeat],
    notes: list[str],
) -> None:
    import optuna
    from optuna.trial import TrialState

    try:
        with workers.heartbeat_while(study, trial, hb):
            value = objective(trial)
    except optuna.TrialPruned:
        _tell(study, trial, notes, state=TrialState.PRUNED)
        return
    except KeyboardInterrupt:
        _tell(study, trial, notes, state=TrialState.FAIL, error="interrupted (KeyboardInterrupt)")
        raise
    except Exception as err:  # one bad trial (NaN, OOM) must not end the study; recorded per trial
        msg = f"trial {trial.number}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        failures.append(msg)
        _tell(study, trial, notes, state=TrialState.FAIL, error=msg)
        return
    _tell(study, trial, notes, value=value)


def _tell(
    study: optuna.Study,
    trial: optuna.Trial,
    notes: list[str],
    value: Optional[float] = None,
    state: Optional[TrialState] = None,
    error: Optional[str] = None,
) -> None:
    """study.tell, except when other workers already failed the trial as dead (its heartbeat
    stalled although this process lived): then its retry counts, and this result is only noted."""
    import optuna

    try:
        if error is not None:
            trial.set_user_attr("tbkit_error", error)
        study.tell(trial, value, state=state)
    except optuna.exceptions.UpdateFinishedTrialError:
        notes.append(
            f"trial {trial.number} finished here after other workers had failed it for a missing heartbeat; "
            "its result was dropped (its retry stands for it)"
        )
