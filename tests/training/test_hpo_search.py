"""tbkit.search in one process: SQLite file storage, exact trial count, pruning, plots, errors;
and the `tbkit search` subcommand writing its results."""

from __future__ import annotations

import argparse
import json

import pytest

pytest.importorskip("optuna", reason="optuna is a tier3 extra (scripts/test.sh installs .[all])")
pytest.importorskip("optuna_integration", reason="optuna-integration is a tier3 extra")
pytest.importorskip("lightning", reason="lightning is a tier3 extra")

import optuna
from optuna.trial import TrialState

import tbkit
from models import HealthyDecoder, build, loaded
from tbkit.errors import TbkitError, UsageError

SMALL = dict(epochs=3, batch_size=16, max_len=16, synthetic=True)


def factory(dropout: float = 0.1):
    """A fresh healthy decoder per trial; takes dropout, so dropout is searched."""
    model = build(HealthyDecoder)
    for m in model.modules():
        if isinstance(m, __import__("torch").nn.Dropout):
            m.p = dropout
    return loaded(model)


@pytest.mark.slow
def test_sqlite_study_runs_exactly_n_trials_with_pruning(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    # A wide lr range, sampled at random (TPE's startup phase covers all 8 trials), makes trials
    # worse than the median that the pruner stops early. (Once TPE steers, each trial tends to beat
    # the median and pruning gets rare: fine for users, useless for showing that it is wired.)
    res = tbkit.search(
        factory,
        n_trials=8,
        storage=url,
        study_name="one",
        seed=1,
        n_startup_trials=8,
        search_space={"lr": (1e-5, 3e-2, "log")},
        **SMALL,
    )
    study = optuna.load_study(study_name="one", storage=url)  # it is really in the file
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(8))  # no duplicate, none lost, none extra
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, "the median pruner never pruned: pruning is not wired"
    assert all(len(t.intermediate_values) < 3 for t in pruned)  # stopped before the last epoch
    assert res.n_complete + res.n_pruned == 8 and res.n_pruned == len(pruned)
    assert set(res.best_params) == {"lr", "weight_decay", "warmup_frac", "dropout"}
    assert res.best_value == pytest.approx(study.best_value)
    # warmup is really given to the scheduler: every trial records the steps it used
    assert all("warmup_steps" in t.user_attrs for t in trials)
    assert {"history", "importance"} <= set(res.figures)
    assert res.trials_df.shape[0] == 8 and res.synthetic

    # the same call again finds the study full and runs nothing more
    again = tbkit.search(factory, n_trials=8, storage=url, study_name="one", **SMALL)
    assert again.trials_run_here == 0 and len(again.study.trials) == 8


def test_in_memory_default_and_dropout_only_when_the_model_has_it():
    import torch.nn as nn

    class NoDropout(HealthyDecoder):
        def __init__(self):
            super().__init__()
            for b in self.blocks:
                b.attn.dropout = 0.0
                b.ffn[3] = nn.Identity()

    res = tbkit.search(loaded(build(NoDropout)), n_trials=2, epochs=1, batch_size=16, max_len=16, synthetic=True)
    assert res.storage_display == "in memory" and res.n_complete == 2
    assert "dropout" not in res.best_params
    assert any("dropout not searched" in n for n in res.notes)


def test_storage_and_worker_errors_are_clear(tmp_path):
    with pytest.raises(UsageError, match="no storage was given"):
        tbkit.search(factory, n_trials=1, worker=True, **SMALL)
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(UsageError, match="no study named 'ghost'"):
        tbkit.search(factory, n_trials=1, worker=True, storage=url, study_name="ghost", **SMALL)
    with pytest.raises(TbkitError) as e:
        tbkit.search(factory, n_trials=1, storage="postgresql://bob:s3cret@127.0.0.1:1/db", **SMALL)
    assert "s3cret" not in str(e.value) and "could not open the Optuna storage" in str(e.value)
    assert "\n" not in str(e.value)


def _command_args(argv):
    from tbkit.cli import search as cmd

    parser = argparse.ArgumentParser()
    cmd.configure(parser)
    return cmd, parser.parse_args(argv)


@pytest.mark.slow
def test_search_command_writes_results(tmp_path, capsys):
    cmd, args = _command_args(
        [
            "tiny_gpt",
            "--synthetic",
            "--trials",
            "3",
            "--epochs",
            "2",
            "--max-len",
            "16",
            "--storage",
            f"sqlite:///{tmp_path / 's.db'}",
            "--study",
            "cli",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert cmd.main(args) == 0
    out = tmp_path / "out"
    summary = json.loads((out / "best_params.json").read_text())
    assert summary["completed"] + summary["pruned"] == 3 and summary["synthetic"] is True
    assert (out / "trials.csv").read_text().count("\n") == 4  # header + 3 trials
    assert (out / "history.png").stat().st_size > 0
    assert "study 'cli'" in capsys.readouterr().out


def test_search_command_requires_data():
    cmd, args = _command_args(["tiny_gpt", "--trials", "1"])
    with pytest.raises(UsageError, match="no training data given"):
        cmd.main(args)


def test_a_worker_that_loses_the_race_for_the_last_slot_runs_nothing_and_says_so():
    from tbkit.training.search import _work

    study = optuna.create_study()
    for _ in range(2):
        study.tell(study.ask(), 1.0)

    class OtherWorkerAsksRightAfterOurCount:
        """The study as this worker sees it: between its count (2 < 3) and its ask, another
        worker takes trial number 2, the last slot."""

        def __init__(self, inner):
            self.inner, self.raced = inner, False

        def get_trials(self, deepcopy=False):
            seen = self.inner.get_trials(deepcopy=deepcopy)
            if not self.raced:
                self.raced = True
                self.inner.tell(self.inner.ask(), 0.5)
            return seen

        def ask(self):
            return self.inner.ask()

        def tell(self, *args, **kwargs):
            return self.inner.tell(*args, **kwargs)

    ran = _work(OtherWorkerAsksRightAfterOurCount(study), lambda t: pytest.fail("must not run"), 3, None, [], [])
    assert ran == 0
    trials = study.get_trials(deepcopy=False)
    assert [t.number for t in trials if t.state == TrialState.COMPLETE] == [0, 1, 2]
    (extra,) = [t for t in trials if t.number >= 3]
    assert extra.state == TrialState.FAIL and "another worker took the last slot" in extra.user_attrs["tbkit_surplus"]


# ---- dead workers: heartbeats and retries (the two-process PostgreSQL case: test_hpo_dead_worker.py)
def test_heartbeat_settings_defaults_and_refusals():
    from tbkit.training.workers import Heartbeat, heartbeat_settings

    assert heartbeat_settings("sqlite:///s.db", None, None, None) == Heartbeat(60, 120, 3)
    assert heartbeat_settings("sqlite:///s.db", 0, None, None) is None  # turned off
    assert heartbeat_settings(None, None, None, None) is None  # in memory: nobody else to notice
    assert heartbeat_settings("postgresql://h/db", 2, 5, 0) == Heartbeat(2, 5, 0)
    with pytest.raises(UsageError, match="not longer than the heartbeat interval"):
        heartbeat_settings("sqlite:///s.db", 10, 10, None)
    with pytest.raises(UsageError, match="max_retry=-1 must be"):
        heartbeat_settings("sqlite:///s.db", 10, None, -1)


def test_a_heartbeat_with_a_study_in_memory_is_refused_clearly():
    import subprocess
    import sys

    with pytest.raises(UsageError, match="heartbeats are kept in an RDB storage") as e:
        tbkit.search(factory, n_trials=1, heartbeat=5, **SMALL)
    assert "sqlite:///study.db" in str(e.value) and "\n" not in str(e.value)
    cli = subprocess.run(
        [sys.executable, "-m", "tbkit", "search", "tiny_gpt", "--synthetic", "--trials", "1", "--heartbeat", "5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 2 and "kept in memory" in cli.stderr and "Traceback" not in cli.stderr


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")  # this test's own asks
def test_a_dead_trial_is_failed_by_heartbeat_retried_and_run_by_a_worker_that_found_the_study_full(tmp_path):
    """In one process with a SQLite file: trial 1 belongs to a worker that died (its heartbeat
    stops). This worker finds both slots filled, but stays while trial 1 is RUNNING; once the
    heartbeat is stale Optuna fails it, the retry callback queues its parameters, and this worker
    runs them."""
    from tbkit.training.search import _open_study, _work
    from tbkit.training.workers import Heartbeat, retry_report, slots_filled

    hb = Heartbeat(interval=1, grace=2, max_retry=1)
    url = f"sqlite:///{tmp_path / 'hb.db'}"
    study = _open_study(url, "hb", False, 0, 3, hb)
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 0.5)
    dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    dead.set_user_attr("tbkit_heartbeat", 1)  # as tbkit's worker marks a trial that beats
    study._storage.record_heartbeat(dead._trial_id)  # its last sign of life
    dead_x = dead.params["x"]
    seen = []

    def objective(trial):
        seen.append(trial.suggest_float("x", 0, 1))
        return 1.0

    ran = _work(study, objective, 2, 60, notes := [], [], hb)
    assert ran == 1 and seen == [dead_x]  # the dead trial's parameters, run here
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[2].system_attrs["failed_trial"] == 1 and slots_filled(trials) == 2
    (line,) = retry_report(trials, hb)
    assert "trial 2 re-ran trial 1" in line and "no heartbeat for over 2 s" in line
    assert not notes


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_a_full_study_does_not_wait_for_a_trial_that_never_beats(tmp_path):
    """A RUNNING trial from a worker without heartbeats (or from before them) can never be
    declared dead: waiting for it would never end, so a worker that finds the study full leaves."""
    from tbkit.training.search import _open_study, _work
    from tbkit.training.workers import Heartbeat

    study = _open_study(f"sqlite:///{tmp_path / 'old.db'}", "old", False, 0, 3, Heartbeat(1, 2, 1))
    study.ask()  # RUNNING for good, no heartbeat
    notes: list = []
    assert _work(study, lambda t: pytest.fail("must not run"), 1, 60, notes, [], Heartbeat(1, 2, 1)) == 0
    assert not notes  # it left at once: waiting would have ended only by "stopped by the timeout"
