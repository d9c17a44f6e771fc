"""The corpus's worker pool (tests/support/corpus_pool.py): a type that kills its worker or hangs is
reported as a Crash with the worker's last words, and the types after it still run in a fresh worker."""

from __future__ import annotations

import corpus_pool
import hf_corpus

FAKE_RUNNER = """
import os, sys, time
import hf_corpus

def run_type(model_type, folder):
    if model_type == "dies":
        print("last words before dying", file=sys.stderr, flush=True)
        os._exit(3)
    if model_type == "hangs":
        time.sleep(600)
    if model_type == "vision":
        return None
    print("noise on stdout must not break the protocol", flush=True)
    return hf_corpus.Outcome(model_type, loaded=True, conventions=[("layout", str(os.getpid()))])
"""


def test_a_crash_or_a_hang_is_reported_and_the_rest_still_runs(tmp_path, monkeypatch):
    (tmp_path / "fake_runner.py").write_text(FAKE_RUNNER)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{hf_corpus.__file__.rsplit('/', 1)[0]}")
    monkeypatch.setenv("CORPUS_RUNNER", "fake_runner:run_type")
    types = ["first", "dies", "after-death", "hangs", "vision", "last"]
    work = tmp_path / "work"
    work.mkdir()

    results = corpus_pool.run_isolated(types, work, workers=1, timeout_s=20)

    assert set(results) == set(types)
    assert isinstance(results["dies"], corpus_pool.Crash)
    assert "exit status 3" in results["dies"].reason and "last words before dying" in results["dies"].reason
    assert isinstance(results["hangs"], corpus_pool.Crash) and "stopped after 20 s" in results["hangs"].reason
    assert results["vision"] is None
    pids = {name: dict(results[name].conventions)["layout"] for name in ("first", "after-death", "last")}
    assert all(results[name].clean for name in pids)
    assert len(set(pids.values())) == 3, "a fresh worker after each crash"
