"""One corpus worker process (started by ``corpus_pool``): reads model types from stdin, one per line,
runs each through ``hf_corpus.run_type`` and answers one JSON line per type on its protocol pipe.

The protocol goes to the original stdout, which is kept on a private descriptor; fd 1 is pointed at
stderr so that whatever a model or transformers prints cannot corrupt it. After a type, a worker
whose resident memory passed the limit it was given says so and exits: the pool starts a fresh one,
so memory that one model left behind (allocator fragmentation, library caches) never reaches the next.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
from pathlib import Path


def _resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(workdir: str, rss_limit_mb: float) -> None:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import torch

    torch.set_num_threads(1)  # the pool runs one worker per core
    module, _, function = os.environ.get("CORPUS_RUNNER", "hf_corpus:run_type").partition(":")
    run_type = getattr(importlib.import_module(module), function)  # the pool's own test swaps it
    for line in sys.stdin:
        model_type = line.strip()
        outcome = run_type(model_type, Path(workdir) / model_type)
        answer = {"type": model_type, "outcome": None if outcome is None else dataclasses.asdict(outcome)}
        answer["recycle"] = _resident_mb() > rss_limit_mb
        protocol.write(json.dumps(answer) + "\n")
        if answer["recycle"]:
            return


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
