"""`tbkit.train(devices=2)`: two CPU processes (DDP over gloo, forked by Lightning) train the
bundled example to the same losses as one device, and resume from a checkpoint.

What "the same" means here: `batch_size` is the global batch, so each of the two processes takes
half of every step's rows, and the data order is a seeded permutation per epoch that both set-ups
share (`lightning_module.EpochSampler`). The training data hold 64 blocks, a multiple of the global batch
(8) and of the process count, so every global step trains on exactly the same 8 blocks in both
runs. DDP then averages the two halves' gradients, which equals the one-device gradient because
every block is full (no padding: equal token counts per half). What remains is float32 rounding:
the two halves are summed in another order, about 1e-7 relative per step, and it grows only
slowly over 16 steps. TOLERANCE = 1e-4 nats sits well above that and well below what a real
difference in the batches makes (dropping one block per epoch, as an uneven split does, moves
the final validation loss by about 3e-3).

The runs take place in a child process with a time limit: Lightning forks its DDP workers from
the process that calls `train`, and a child keeps that away from pytest.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("lightning", reason="lightning is a tier3 extra (scripts/test.sh installs .[all])")

TOLERANCE = 1e-4

SCRIPT = textwrap.dedent("""
    import json, sys
    import lightning.pytorch as pl
    import torch
    import tbkit

    class StopAt(pl.Callback):  # ends the first leg at a step, as an interruption would
        def __init__(self, step):
            self.step = step
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step >= self.step:
                trainer.should_stop = True

    model = tbkit.load()  # the bundled example (tiny GPT, vocabulary 512)
    # 71 blocks of 32 random ids: the seeded split keeps 64 for training and 7 for validation
    ids = torch.randint(0, 512, (71, 32), generator=torch.Generator().manual_seed(0))
    common = dict(epochs=2, batch_size=8, max_len=32, lr=3e-3, seed=0)

    def run(devices, ckdir, **kw):
        r = tbkit.train(model, ids, devices=devices, checkpoint_dir=ckdir, **common, **kw)
        return {"final": r.final_val_loss, "steps": r.step_metrics["train_loss"].tolist(),
                "logged": r.step_metrics["step"].tolist(), "global_step": r.global_step,
                "resumed_step": r.resumed_step, "distribution": r.distribution, "precision": r.precision,
                "epochs": r.metrics["val_loss"].tolist(),
                "checkpoints": sorted(p.name for p in r.checkpoints)}

    base = sys.argv[1]
    out = {"one": run(1, base + "/one", resume=False), "two": run(2, base + "/two", resume=False)}
    run(2, base + "/leg", resume=False, callbacks=[StopAt(8)])
    out["resumed"] = run(2, base + "/leg", resume=True)
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_two_cpu_processes_train_like_one_device_and_resume(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    env_threads = {"OMP_NUM_THREADS": "1"}  # two processes on a small machine: one thread each
    import os

    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=420,
        env={**os.environ, **env_threads},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    one, two, resumed = out["one"], out["two"], out["resumed"]

    assert "2 processes" in two["distribution"] and "ddp_fork" in two["distribution"]
    assert one["distribution"] == "1 device" and two["precision"] == "32-true"
    # the same number of optimizer steps, the same per-step (global) losses, the same result
    assert one["global_step"] == two["global_step"] == 16
    assert len(one["steps"]) == len(two["steps"]) == 16
    assert max(abs(a - b) for a, b in zip(one["steps"], two["steps"])) < TOLERANCE
    assert abs(one["final"] - two["final"]) < TOLERANCE
    assert max(abs(a - b) for a, b in zip(one["epochs"], two["epochs"])) < TOLERANCE
    assert one["steps"][-1] < one["steps"][0]  # and it did learn
    # process 0 alone writes the checkpoints: one set, as on one device
    assert two["checkpoints"] == one["checkpoints"]

    # stopped at step 8 and resumed on two processes: picks up at the checkpoint, keeps the
    # history from before, and ends where the uninterrupted one-device run ended
    assert resumed["resumed_step"] == 8 and resumed["global_step"] == 16
    assert resumed["logged"] == list(range(1, 17))
    assert abs(resumed["final"] - one["final"]) < TOLERANCE
