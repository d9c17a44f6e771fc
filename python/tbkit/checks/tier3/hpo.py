"""The ``hpo`` check (Tier 3)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Optional

from tbkit.checks.base import CheckContext, Row, Status, register
from tbkit.checks.spec import Option
from tbkit.checks.tier3.common import data_option, synthetic_label, why_not_trainable
from tbkit.training.api import search
from tbkit.training.copies import closures_over_own_submodules


def _why_not_searchable(ctx: CheckContext) -> Optional[str]:
    """hpo trains copies of the model (tbkit.search): a model whose copies would still run the
    original's submodules (a stored lambda closing over them) cannot be searched that way."""
    why = why_not_trainable(ctx)
    if why is not None:
        return why
    leaks = closures_over_own_submodules(ctx.model.module)
    if leaks:
        return (
            f"each trial trains a copy, and a copy of this model still runs the original's {', '.join(leaks[:5])} "
            "(a stored lambda closes over them). Search with tbkit.search(lambda: MyModel(), ...) or call "
            "the submodule from a method"
        )
    return None


@register(
    "hpo",
    tier=3,
    summary="Optuna TPE + median pruning (Lightning callback): trials, best params, plots",
    needs=("optuna", "optuna-integration", "lightning"),
    applies=_why_not_searchable,
    options=(
        Option("trials", int, 6, "", "number of Optuna trials", positive=True),
        Option("epochs", int, 3, "", "epochs per trial", positive=True),
        Option("storage", str, None, "", "Optuna storage URL (sqlite:///study.db, postgresql://…); none: in memory"),
        Option("study_name", str, None, "", "Optuna study name (workers sharing a storage share it)"),
    ),
)
def check_hpo(ctx: CheckContext) -> Iterator[Row]:
    """Optuna TPE sampler + median pruner, pruning through the Lightning callback
    (``optuna_integration``); storage in memory, a SQLite file, or any Optuna RDB URL for several
    workers. Trials table, best parameters, history and importance plots. Each trial trains its own
    copy (``tbkit.search``); the user's model is not trained.

    Why: which learning rate, dropout and batch size suit the design. Thresholds: at least one trial
    must complete, else FAIL. Fix: widen the search space or the budget."""
    data, synthetic = data_option(ctx)
    res = search(
        ctx.model,
        data,
        synthetic=synthetic,
        n_trials=int(ctx.option("trials")),
        epochs=int(ctx.option("epochs")),
        batch_size=int(ctx.run_option("batch_size")),
        max_len=ctx.run_option("max_len"),
        storage=ctx.option("storage"),
        study_name=ctx.option("study_name"),
        device=ctx.device,
        seed=ctx.seed,
    )
    label = synthetic_label(res.synthetic)
    status = Status.PASS if res.n_complete >= 1 else Status.FAIL
    yield ctx.row(
        status,
        "trials_completed",
        res.n_complete,
        ">= 1",
        f"{label}{res.n_complete} completed, {res.n_pruned} pruned, {res.n_failed} failed of "
        f"{len(res.trials_df)} trials in study {res.study.study_name!r} ({res.storage_display})"
        + (f"; failures: {res.failures[0]}" if res.failures else ""),
    )
    yield ctx.row(
        Status.PASS,
        "trials_pruned",
        res.n_pruned,
        "",
        f"{label}MedianPruner through optuna_integration.PyTorchLightningPruningCallback on val_loss per epoch",
    )
    if res.n_complete:
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in res.best_params.items())
        yield ctx.row(Status.PASS, "best_val_loss", round(res.best_value, 4), "", f"{label}best params: {params}")
    for note in res.notes:
        yield ctx.row(Status.PASS, "note", None, "", label + note)
    for name, fig in res.figures.items():
        ctx.save_figure(fig, name)
