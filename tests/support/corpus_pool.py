"""Runs the Hugging Face corpus in worker processes, so that the whole sweep fits CI's memory and time.

Run in one process, the sweep once grew to 24 GB resident and was killed at its 131st type: the
activation measurement kept every forward's graph alive (fixed; ``test_no_leak_across_runs.py``),
and allocator caches still hold the peak of the largest model so far. Here each worker (``corpus_worker.py``) runs types one at a time and is
replaced once its resident memory passes a limit; one worker per core (torch on one thread each) halves
the wall time on two cores. A type that kills its worker or runs past the time limit becomes a ``Crash``
(the test fails with the worker's last words), and the remaining types go on in a fresh worker.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import hf_corpus

WORKER = Path(__file__).with_name("corpus_worker.py")
RSS_LIMIT_MB = 3000
TYPE_TIMEOUT_S = 900  # a tiny model takes seconds; the largest stated length takes a few minutes


@dataclass
class Crash:
    model_type: str
    reason: str


Result = Union[hf_corpus.Outcome, Crash, None]  # None: not a text-only config


def default_workers() -> int:
    """One per core, but no more than memory allows (a worker may reach ~6 GB on a long-context model)."""
    if os.environ.get("TBKIT_CORPUS_WORKERS"):
        return max(1, int(os.environ["TBKIT_CORPUS_WORKERS"]))
    available_gb = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    return max(1, min(os.cpu_count() or 1, int(available_gb // 6)))


def run_isolated(types: list, workdir: Path, workers: Optional[int] = None, timeout_s: float = TYPE_TIMEOUT_S) -> dict:
    """``{model_type: Outcome | Crash | None}`` for every type, run in fresh worker processes."""
    pending: queue.Queue = queue.Queue()
    for model_type in types:
        pending.put(model_type)
    results: dict = {}
    threads = [
        threading.Thread(target=_drive_workers, args=(pending, results, workdir, n, timeout_s), daemon=True)
        for n in range(workers or default_workers())
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _drive_workers(pending: queue.Queue, results: dict, workdir: Path, slot: int, timeout_s: float) -> None:
    """Feeds types to one worker at a time, starting a fresh one when the last exits or is killed."""
    worker = None
    while True:
        try:
            model_type = pending.get_nowait()
        except queue.Empty:
            break
        if worker is None:
            worker = _Worker(workdir, slot, timeout_s)
        result, alive = worker.run(model_type)
        results[model_type] = result
        if not alive:
            worker = None
    if worker is not None:
        worker.close()


class _Worker:
    def __init__(self, workdir: Path, slot: int, timeout_s: float) -> None:
        self.log = workdir / f"worker-{slot}.log"
        self.timeout_s = timeout_s
        self.timed_out = False
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), str(workdir), str(RSS_LIMIT_MB)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.log, "ab"),
            text=True,
            env=env,
            cwd=workdir,
        )

    def run(self, model_type: str) -> tuple:
        """(result, whether this worker takes another type)."""
        timer = threading.Timer(self.timeout_s, self._time_out)
        timer.start()
        try:
            self.process.stdin.write(model_type + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        finally:
            timer.cancel()
        if not line:
            return Crash(model_type, self._death()), False
        answer = json.loads(line)
        outcome = answer["outcome"]
        result = None if outcome is None else hf_corpus.Outcome(**outcome)
        if answer["recycle"]:
            self.close()
            return result, False
        return result, True

    def _time_out(self) -> None:
        self.timed_out = True
        self.process.kill()

    def _death(self) -> str:
        code = self.process.wait()
        tail = self.log.read_text(errors="replace")[-1500:]
        cause = f"stopped after {self.timeout_s:g} s" if self.timed_out else f"exit status {code}"
        return f"the worker died running it ({cause}); its last output:\n{tail}"

    def close(self) -> None:
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
