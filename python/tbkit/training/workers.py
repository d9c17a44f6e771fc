"""How one worker takes part in a study that several share: which trials fill the study's
``n_trials`` slots, Optuna's heartbeats, and the retry of trials whose worker died.

A worker that dies mid-trial (a recycled Colab runtime, a pre-empted machine) cannot say so. With
a heartbeat, Optuna's RDB storage records a time stamp for each running trial every ``interval``
seconds (a thread of the worker); any worker that calls ``fail_stale_trials`` marks a RUNNING
trial whose last beat is older than ``grace`` seconds as FAIL, and the storage's callback,
Optuna's ``RetryHeartbeatStaleTrialCallback`` (``RetryFailedTrialCallback`` before Optuna 4.9),
queues a copy of it, same parameters, as a WAITING trial, at most ``max_retry`` times per trial.
The next ``study.ask()`` of any worker takes the waiting copy first. Heartbeats need an RDB
storage (a SQLite file or a PostgreSQL server): a study in memory lives and dies with its one
process, so there is nobody to notice.

A trial run with heartbeats carries the user attribute ``tbkit_heartbeat`` (the interval): a worker
that finds the study full waits for those only, since a trial that never beats can never be
declared dead.

Slots: COMPLETE, PRUNED, RUNNING and WAITING trials each fill one; a FAIL fills one unless it was
retried (its copy fills it instead) or was a surplus ask (``tbkit_surplus``). Trial numbers come
from the storage under a row lock, so "slots filled by trials numbered below mine" decides, for
every worker alike, whether a freshly asked trial still has a slot.
"""

from __future__ import annotations

import contextlib
import inspect
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Union

from tbkit.errors import UsageError

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage
    from optuna.storages._heartbeat import BaseHeartbeatThread
    from optuna.trial import FrozenTrial

DEFAULT_INTERVAL = 60  # seconds between heartbeats when a shared storage is used and none is given
DEFAULT_MAX_RETRY = 3
# how often a worker that found the study full looks again at the trials running elsewhere: not
# the heartbeat interval (60 s by default), or every study would end up to a minute late
WAIT_POLL = 2.0


@dataclass(frozen=True)
class Heartbeat:
    interval: int  # seconds between a running trial's heartbeats
    grace: int  # a running trial whose last heartbeat is older than this is declared dead
    max_retry: int  # how many times one trial's parameters are run again

    def describe(self) -> str:
        return (
            f"heartbeat every {self.interval} s; a trial silent for over {self.grace} s is failed and "
            f"retried (at most {self.max_retry} times)"
        )


def heartbeat_settings(
    storage: Optional[str], interval: Optional[int], grace: Optional[int], max_retry: Optional[int]
) -> Optional[Heartbeat]:
    """The heartbeat for ``storage``: on by default for RDB storages, off with ``interval=0``."""
    if storage is None:
        if interval:
            raise UsageError(
                f"a heartbeat (every {interval} s) was asked for, but the study is kept in memory: heartbeats "
                "are kept in an RDB storage, where other workers can see that a trial's worker went silent",
                "Pass storage='sqlite:///study.db' or storage='postgresql://…' (CLI: --storage URL), or drop "
                "the heartbeat.",
            )
        return None
    if interval == 0:
        return None
    interval = DEFAULT_INTERVAL if interval is None else interval
    grace = 2 * interval if grace is None else grace  # Optuna's own default
    max_retry = DEFAULT_MAX_RETRY if max_retry is None else max_retry
    for name, value, low in (("heartbeat", interval, 1), ("grace_period", grace, 1), ("max_retry", max_retry, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise UsageError(f"{name}={value!r} must be a whole number, {low} or more", f"Pass {name}={max(low, 1)}.")
    if grace <= interval:
        raise UsageError(
            f"grace_period={grace} s is not longer than the heartbeat interval of {interval} s: live trials "
            "would be declared dead between two beats",
            f"Use a grace period of at least twice the interval, e.g. {2 * interval}.",
        )
    return Heartbeat(interval, grace, max_retry)


def rdb_storage(url: str, hb: Optional[Heartbeat]) -> Union[str, RDBStorage]:
    """What ``create_study``/``load_study`` get: the URL itself, or an RDBStorage with heartbeats."""
    if hb is None:
        return url
    import optuna

    storages = optuna.storages
    retry = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
    params = inspect.signature(storages.RDBStorage).parameters
    key = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params else "failed_trial_callback"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        callback: dict[str, Any] = {key: retry(max_retry=hb.max_retry)}  # the name depends on Optuna's version
        return storages.RDBStorage(url, heartbeat_interval=hb.interval, grace_period=hb.grace, **callback)


# ---- slots ---------------------------------------------------------------------------------
def _retried_numbers(trials: Iterable[FrozenTrial]) -> set[int]:
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def slots_filled(trials: Sequence[FrozenTrial], below: Optional[int] = None) -> int:
    """Trials filling one of the study's slots (see the module docstring), optionally only those
    numbered below ``below``."""
    from optuna.trial import TrialState

    retried = _retried_numbers(trials)
    count = 0
    for t in trials:
        if below is not None and t.number >= below:
            continue
        if t.state == TrialState.FAIL and (t.number in retried or "tbkit_surplus" in t.user_attrs):
            continue
        count += 1
    return count


# ---- the worker loop -------------------------------------------------------------------------
def fail_stale(study: optuna.Study) -> None:
    """Optuna's own check: RUNNING trials silent for longer than the grace period become FAIL and
    the storage's retry callback queues them again."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def next_trial(
    study: optuna.Study, n_trials: int, hb: Optional[Heartbeat], deadline: Optional[float] = None
) -> Optional[optuna.Trial]:
    """The next trial for this worker to run, or None when the study needs no more from it.

    With heartbeats, a worker that finds every slot filled stays (until ``deadline``, a
    ``time.monotonic()`` value) while trials still run elsewhere: each either finishes, or its
    worker died and it comes back as a WAITING copy that this worker then runs (also when it was
    the study's last trial)."""
    from optuna.trial import TrialState

    while deadline is None or time.monotonic() < deadline:
        if hb is not None:
            fail_stale(study)
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if slots_filled(trials) >= n_trials and not waiting:
            # only trials that beat can be declared dead: one from a worker without heartbeats
            # (or from before them) would keep this worker here for ever
            if hb is not None and any(
                t.state == TrialState.RUNNING and "tbkit_heartbeat" in t.user_attrs for t in trials
            ):
                time.sleep(min(hb.interval, WAIT_POLL))
                continue
            return None
        with warnings.catch_warnings():  # ask/tell is how tbkit counts slots; the heartbeat is ours
            warnings.filterwarnings("ignore", message=r".*Heartbeat of storage is supposed to be used.*")
            trial = study.ask()
        if slots_filled(study.get_trials(deepcopy=False), below=trial.number) >= n_trials:
            # another worker took the last slot between our count and our ask
            trial.set_user_attr("tbkit_surplus", "another worker took the last slot; not run")
            study.tell(trial, state=TrialState.FAIL)
            return None
        if hb is not None:
            trial.set_user_attr("tbkit_heartbeat", hb.interval)  # others may wait for this trial
        return trial
    return None


def heartbeat_while(
    study: optuna.Study, trial: optuna.Trial, hb: Optional[Heartbeat]
) -> Union[contextlib.nullcontext[None], BaseHeartbeatThread]:
    """Optuna's heartbeat thread for ``trial`` (the one ``study.optimize`` runs), or a no-op."""
    if hb is None:
        return contextlib.nullcontext()
    from optuna.storages._heartbeat import get_heartbeat_thread  # what Study.optimize uses

    return get_heartbeat_thread(trial._trial_id, study._storage)


def retry_report(trials: Sequence[FrozenTrial], hb: Optional[Heartbeat]) -> list[str]:
    """One line per retried trial: which trial it re-ran, whose worker went silent, and why."""
    by_number = {t.number: t for t in trials}
    lines = []
    for t in sorted(trials, key=lambda t: t.number):
        history = t.system_attrs.get("retry_history", [])
        if not history:
            continue
        previous = by_number.get(history[-1])
        worker = previous.user_attrs.get("worker", "?") if previous is not None else "?"
        silent = f"over {hb.grace} s" if hb is not None else "longer than the grace period"
        lines.append(
            f"trial {t.number} re-ran trial {history[-1]} (first of the series: {history[0]}): its worker {worker} "
            f"sent no heartbeat for {silent}, so it was failed as dead; retry {len(history)}, now {t.state.name}"
        )
    retried = _retried_numbers(trials)
    for t in trials:
        if (
            t.state.name == "FAIL"
            and t.number not in retried
            and not set(t.user_attrs) & {"tbkit_error", "tbkit_surplus"}
        ):
            lines.append(
                f"trial {t.number} failed without a result (its worker {t.user_attrs.get('worker', '?')} stopped: "
                "no heartbeat) and was not retried: the retries were used up, or heartbeats were off"
            )
    return lines
