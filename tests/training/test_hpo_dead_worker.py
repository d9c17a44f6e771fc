"""A worker killed with SIGKILL in the middle of a trial, against a real PostgreSQL server: Optuna's
heartbeat lets the surviving worker fail the dead trial, Optuna's retry callback queues its
parameters again, the survivor runs them, and the study still ends with the requested number of
trials, without any parameter set ever running twice at the same time."""

from __future__ import annotations

import datetime
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict

import pytest

pytest.importorskip("optuna", reason="optuna is a tier3 extra (scripts/test.sh installs .[all])")
pytest.importorskip("optuna_integration", reason="optuna-integration is a tier3 extra")
pytest.importorskip("lightning", reason="lightning is a tier3 extra")

import optuna
from optuna.trial import TrialState

from pg_server import pg_url  # noqa: F401  (the fixture)
from tbkit.training.search import _with_driver
from tbkit.training.workers import slots_filled

N_TRIALS = 5
HEARTBEAT, GRACE = 1, 4  # seconds: short, so the test stays short; GRACE leaves a loaded machine room


def _worker(url: str, study: str, log) -> subprocess.Popen:
    argv = [sys.executable, "-m", "tbkit", "search", "tiny_gpt", "--synthetic", "--trials", str(N_TRIALS)]
    # enough epochs that a trial lasts long enough to be caught running, on a quiet machine too
    argv += ["--epochs", "12", "--max-len", "16", "--storage", url, "--study", study, "--worker"]
    argv += ["--heartbeat", str(HEARTBEAT), "--grace-period", str(GRACE), "--max-retry", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two workers on a small machine: one thread each
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)


def _kill_mid_trial(proc: subprocess.Popen, study, deadline: float) -> tuple:
    """SIGKILL ``proc`` in the middle of one of its trials; (trial number, when).

    The worker is frozen (SIGSTOP) before the trial's state is read again, so the trial cannot
    finish between the look and the kill."""
    me = f"{socket.gethostname()}:{proc.pid}"

    def running_here():
        now = datetime.datetime.now()
        return [
            t.number
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("worker") == me and (now - t.datetime_start).total_seconds() > 0.3
        ]

    while time.monotonic() < deadline:
        assert proc.poll() is None, "the worker to kill ended before it was killed"
        if running_here():
            proc.send_signal(signal.SIGSTOP)
            still = running_here()
            if still:
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
                return still[0], datetime.datetime.now()
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    pytest.fail("the worker never ran a trial long enough to be killed in it")


@pytest.mark.slow
def test_a_killed_workers_trial_is_failed_by_heartbeat_and_retried_by_the_survivor(pg_url, tmp_path):
    direct = _with_driver(pg_url)
    optuna.create_study(study_name="dead", storage=direct, direction="minimize")
    study = optuna.load_study(study_name="dead", storage=direct)
    logs = [open(tmp_path / f"worker{i}.log", "w+") for i in range(2)]
    victim, survivor = (_worker(pg_url, "dead", log) for log in logs)
    try:
        killed, killed_at = _kill_mid_trial(victim, study, time.monotonic() + 240)
        survivor.wait(timeout=300)
    finally:
        for p in (victim, survivor):
            if p.poll() is None:
                p.kill()
    logs[1].seek(0)
    output = logs[1].read()
    for log in logs:
        log.close()
    assert victim.returncode == -signal.SIGKILL
    assert survivor.returncode == 0, output[-3000:]

    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    dead = by_number[killed]
    # the killed trial ended FAIL through the heartbeat (no error of its own was ever recorded)
    assert dead.state == TrialState.FAIL and "tbkit_error" not in dead.user_attrs
    assert dead.datetime_complete is not None
    # Optuna's retry callback queued its parameters; the survivor ran them, after the kill and
    # after the dead trial was failed
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert retry.params == dead.params
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retry.user_attrs["worker"] == f"{socket.gethostname()}:{survivor.pid}"
    assert retry.datetime_start >= dead.datetime_complete and retry.datetime_start > killed_at
    # the study holds exactly the requested trials, all finished, none lost
    assert slots_filled(trials) == N_TRIALS
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == N_TRIALS
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # no parameter set ever ran twice at the same time
    runs = defaultdict(list)
    for t in trials:
        if t.params:
            runs[tuple(sorted(t.params.items()))].append((t.datetime_start, t.datetime_complete))
    for spans in runs.values():
        spans.sort()
        assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:]))
    # and the study's summary says what happened and why
    assert "1 trial(s) retried after their worker died" in output
    assert f"re-ran trial {killed}" in output and "sent no heartbeat for over 4 s" in output
