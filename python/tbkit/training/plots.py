"""The figures of training and search (matplotlib ``Figure`` objects, never pyplot or plotly):
the loss curve of a run, the history of a study and its parameter importances.

matplotlib and optuna are imported inside each function: ``import tbkit`` stays light.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional, cast

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure

    from tbkit.training.api import TrainResult


def loss_curve_figure(result: TrainResult, title: str = "training loss") -> Figure:
    """Per-step train loss and per-epoch validation loss of a ``TrainResult``."""
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


def history_figure(study: optuna.Study, synthetic: bool = False) -> Figure:
    """Completed trials, the best so far, and pruned trials at their last reported value."""
    from matplotlib.figure import Figure
    from optuna.trial import TrialState

    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if done:
        # a COMPLETE trial has its value
        ax.plot([t.number for t in done], [cast(float, t.value) for t in done], "o", label="completed")
        best, xs, ys = math.inf, [], []
        for t in done:
            best = min(best, cast(float, t.value))
            xs.append(t.number)
            ys.append(best)
        ax.step(xs, ys, where="post", label="best so far")
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    if pruned:
        ax.plot(
            [t.number for t in pruned],
            [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
            "x",
            label="pruned (last reported)",
        )
    ax.set_xlabel("trial")
    ax.set_ylabel("validation loss")
    ax.set_title("optimization history" + (" [SYNTHETIC DATA]" if synthetic else ""))
    if done or pruned:
        ax.legend()
    fig.tight_layout()
    return fig


def importance_figure(study: optuna.Study) -> tuple[Optional[Figure], str]:
    """(Figure or None, note): fANOVA parameter importances over the completed trials."""
    import optuna
    from matplotlib.figure import Figure

    n_done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    if n_done < 2:
        return None, f"no importance plot: it needs 2 or more completed trials, the study has {n_done}"
    try:
        imp = optuna.importance.get_param_importances(study)
    except Exception as err:  # e.g. all completed trials share one value
        return None, f"no importance plot: {type(err).__name__}: {err}"
    fig = Figure(figsize=(5, 3))
    ax = fig.add_subplot(1, 1, 1)
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names])
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title("hyperparameter importance")
    fig.tight_layout()
    return fig, ""
