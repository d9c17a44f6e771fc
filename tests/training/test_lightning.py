"""tbkit.train with lightning.pytorch: copies not mutations, metrics, checkpoints, and resume after
a SIGKILL mid-run (a real subprocess killed once a checkpoint is on disk)."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning", reason="lightning is a tier3 extra (scripts/test.sh installs .[all])")

import tbkit
from models import HealthyDecoder, build, loaded

SUPPORT = Path(__file__).resolve().parents[1] / "support"


def test_train_copies_the_model_and_reports_epochs(tmp_path):
    lm = loaded(build(HealthyDecoder))
    before = {k: v.clone() for k, v in lm.module.state_dict().items()}
    res = tbkit.train(
        lm, synthetic=True, epochs=2, batch_size=16, max_len=16, lr=3e-3, checkpoint_dir=tmp_path / "ck", seed=0
    )
    # the caller's model is untouched; the result holds another, trained, module
    assert all(torch.equal(before[k], v) for k, v in lm.module.state_dict().items())
    assert res.model is not lm.module
    assert res.synthetic and "SYNTHETIC" in res.summary()
    assert list(res.metrics["epoch"]) == [0, 1]
    assert res.metrics["val_loss"].notna().all() and (res.metrics["val_ppl"] > 1).all()
    assert res.best_val_loss < res.initial_val_loss  # it learned something
    names = {p.name for p in res.checkpoints}
    assert "last.ckpt" in names and any(n.startswith("best-") for n in names)
    assert res.global_step == len(res.step_metrics) and res.precision == "32-true"


def test_train_leaves_the_callers_random_state_alone(tmp_path):
    import random

    import numpy as np

    lm = loaded(build(HealthyDecoder))  # build() seeds torch itself: before the snapshot
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    tbkit.train(
        lm, synthetic=True, epochs=1, max_steps=2, batch_size=16, max_len=16, checkpoint_dir=tmp_path / "ck", seed=123
    )
    assert random.getstate() == before[0]
    assert np.array_equal(np.random.get_state()[1], before[1])
    assert torch.equal(torch.get_rng_state(), before[2])


def test_in_place_trains_the_callers_model(tmp_path):
    lm = loaded(build(HealthyDecoder))
    w0 = lm.module.head.weight.detach().clone()
    res = tbkit.train(
        lm,
        synthetic=True,
        epochs=1,
        max_steps=3,
        batch_size=16,
        max_len=16,
        checkpoint_dir=tmp_path / "ck",
        in_place=True,
    )
    assert res.model is lm.module and not torch.equal(w0, lm.module.head.weight)


def test_train_on_a_text_file_and_token_arrays(tmp_path):
    f = tmp_path / "tiny.txt"
    f.write_text("the quick brown fox jumps over the lazy dog. " * 30)
    res = tbkit.train(
        loaded(build(HealthyDecoder)), str(f), epochs=1, batch_size=8, max_len=32, checkpoint_dir=tmp_path / "a"
    )
    assert not res.synthetic and "char-level tokenizer built from tiny.txt" in res.notes[0]
    ids = torch.randint(0, 97, (40, 32))
    res2 = tbkit.train(
        loaded(build(HealthyDecoder)), ids.numpy(), epochs=1, batch_size=8, checkpoint_dir=tmp_path / "b"
    )
    assert "token ids (40 rows of 32" in res2.data_description


def test_refusals_are_usage_errors(tmp_path):
    from models import HealthyEncoder
    from tbkit.errors import UsageError

    with pytest.raises(UsageError, match="no training data given"):
        tbkit.train(loaded(build(HealthyDecoder)), checkpoint_dir=tmp_path)
    with pytest.raises(UsageError, match="exceeds the model's maximum sequence length 32"):
        tbkit.train(loaded(build(HealthyDecoder)), synthetic=True, max_len=64, checkpoint_dir=tmp_path)
    with pytest.raises(UsageError, match="this model's kind is encoder"):
        tbkit.train(loaded(build(HealthyEncoder)), synthetic=True, checkpoint_dir=tmp_path)


CHILD = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, {tests!r})
    import lightning.pytorch as pl
    import tbkit
    from models import HealthyDecoder, build, loaded

    class Slow(pl.Callback):  # makes the run long enough to be killed in the middle
        def on_train_batch_end(self, *args):
            time.sleep(float(sys.argv[2]))

    res = tbkit.train(loaded(build(HealthyDecoder)), synthetic=True, epochs=1000, max_steps={steps},
                      batch_size=8, max_len=16, checkpoint_dir=sys.argv[1], checkpoint_every_n_steps=5,
                      callbacks=[Slow()], seed=0)
    print(json.dumps({{"global_step": res.global_step, "resumed_step": res.resumed_step,
                      "first_logged_step": int(res.step_metrics["step"].iloc[0]),
                      "logged_steps": len(res.step_metrics)}}))
""")


@pytest.mark.slow
def test_run_killed_mid_way_resumes_from_its_checkpoint(tmp_path):
    steps = 40
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(SUPPORT), steps=steps))
    ck = tmp_path / "ck"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(ck), "0.25"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 180
        while not any(ck.glob("latest-*step=10.ckpt")):
            assert proc.poll() is None, f"child ended before a checkpoint: {proc.communicate()}"
            assert time.monotonic() < deadline, "no checkpoint appeared in time"
            time.sleep(0.1)
        time.sleep(0.3)  # let the write of last.ckpt finish; the child is now sleeping in a step
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    saved = torch.load(ck / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    assert 10 <= saved < steps

    done = subprocess.run([sys.executable, str(script), str(ck), "0"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["resumed_step"] == saved  # started from the checkpoint, not from scratch
    assert out["global_step"] == steps  # and reached the same step count an uninterrupted run does
    # the per-step history from before the kill came back with the checkpoint
    assert out["first_logged_step"] == 1 and out["logged_steps"] == steps


def test_a_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    from tbkit.errors import TbkitError

    ck = tmp_path / "ck"
    tbkit.train(
        loaded(build(HealthyDecoder)),
        synthetic=True,
        epochs=1,
        max_steps=2,
        batch_size=16,
        max_len=16,
        checkpoint_dir=ck,
    )
    other = loaded(build(HealthyDecoder, d=16))
    with pytest.raises(TbkitError, match="does not fit this model.*resume=False"):
        tbkit.train(other, synthetic=True, epochs=1, max_steps=4, batch_size=16, max_len=16, checkpoint_dir=ck)
    # and resume=False starts afresh in the same folder
    res = tbkit.train(
        other, synthetic=True, epochs=1, max_steps=2, batch_size=16, max_len=16, checkpoint_dir=ck, resume=False
    )
    assert res.resumed_from is None and res.global_step == 2


def test_precision_is_stated_and_can_be_overridden(tmp_path):
    from tbkit.errors import UsageError

    small = dict(synthetic=True, epochs=1, max_steps=2, batch_size=16, max_len=16)
    auto = tbkit.train(loaded(build(HealthyDecoder)), checkpoint_dir=tmp_path / "a", device="cpu", **small)
    assert auto.precision == "32-true" and "(automatic: fp32 on CPU)" in auto.summary()
    bf16 = tbkit.train(
        loaded(build(HealthyDecoder)), checkpoint_dir=tmp_path / "b", device="cpu", precision="bf16", **small
    )
    assert bf16.precision == "bf16-mixed" and bf16.precision_reason == "asked for"
    assert bf16.global_step == 2 and math.isfinite(bf16.final_val_loss)
    with pytest.raises(UsageError, match="does not run on the CPU"):
        tbkit.train(
            loaded(build(HealthyDecoder)), checkpoint_dir=tmp_path / "c", device="cpu", precision="fp16", **small
        )
    assert not (tmp_path / "c").exists()  # refused before anything was written
