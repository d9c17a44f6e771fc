"""Two `tbkit search --worker` processes work ONE study kept in a real PostgreSQL server (Debian's,
started by the test on 127.0.0.1): the study ends with exactly the requested trials, each number
once, none lost, and both workers took part."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("optuna", reason="optuna is a tier3 extra (scripts/test.sh installs .[all])")
pytest.importorskip("optuna_integration", reason="optuna-integration is a tier3 extra")
pytest.importorskip("lightning", reason="lightning is a tier3 extra")

import optuna
from optuna.trial import TrialState

from pg_server import pg_url  # noqa: F401  (the fixture)
from tbkit.training.search import _with_driver

N_TRIALS = 8


def _worker(url: str, study: str, out) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "tbkit",
        "search",
        "tiny_gpt",
        "--synthetic",
        "--trials",
        str(N_TRIALS),
        "--epochs",
        "2",
        "--max-len",
        "16",
        "--storage",
        url,
        "--study",
        study,
        "--worker",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two workers on a small machine: one thread each
    return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.slow
def test_two_workers_share_one_postgres_study(pg_url, tmp_path):
    # The study is created first (as a coordinator would), then two workers join it at once. The
    # workers get the plain postgresql:// URL a user writes; tbkit picks the installed driver.
    direct = _with_driver(pg_url)
    optuna.create_study(study_name="shared", storage=direct, direction="minimize")
    logs = [open(tmp_path / f"worker{i}.log", "w+") for i in range(2)]
    procs = [_worker(pg_url, "shared", log) for log in logs]
    try:
        for p in procs:
            p.wait(timeout=420)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]

    trials = optuna.load_study(study_name="shared", storage=direct).get_trials(deepcopy=False)
    slots = [t for t in trials if t.number < N_TRIALS]
    surplus = [t for t in trials if t.number >= N_TRIALS]
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))  # no duplicate trial numbers
    assert sorted(t.number for t in slots) == list(range(N_TRIALS))  # none lost
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in slots)
    # a worker that lost the race for the last slot does not run it and marks it so
    assert all(t.state == TrialState.FAIL and "tbkit_surplus" in t.user_attrs for t in surplus)
    workers = {t.user_attrs["worker"] for t in slots}
    assert len(workers) == 2, f"only {workers} ran trials"
    assert all("study 'shared'" in text for text in outputs)
