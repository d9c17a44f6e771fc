"""The decisions behind a training run that need no GPU to test: which precision (bf16 / fp16 with
loss scaling / fp32) for which hardware, and which Lightning strategy and per-process batch for
which devices / nodes / launcher."""

from __future__ import annotations

import pytest

from tbkit.errors import UsageError
from tbkit.training.distributed import launched_externally, plan
from tbkit.training.precision import Capabilities, choose_precision

pytestmark = pytest.mark.quick

AMPERE = Capabilities("gpu", bf16=True)
TURING = Capabilities("gpu", bf16=False)  # e.g. a Colab T4
CPU = Capabilities("cpu")


def test_precision_is_chosen_from_what_the_hardware_runs():
    assert choose_precision(AMPERE).precision == "bf16-mixed"
    fp16 = choose_precision(TURING)
    assert fp16.precision == "16-mixed" and "loss scaling" in fp16.reason
    assert choose_precision(CPU).precision == "32-true"
    assert choose_precision(Capabilities("mps")).precision == "32-true"
    assert all("automatic" in choose_precision(c).reason for c in (AMPERE, TURING, CPU))


def test_an_explicit_precision_wins_when_the_hardware_runs_it():
    assert choose_precision(AMPERE, "fp32").precision == "32-true"
    assert choose_precision(AMPERE, "FP16").precision == "16-mixed"
    assert choose_precision(CPU, "bf16").precision == "bf16-mixed"  # CPU autocast does bf16
    assert choose_precision(TURING, "16-mixed").reason == "asked for"
    assert str(choose_precision(AMPERE, "bf16-true")) == "bf16-true (asked for)"


@pytest.mark.parametrize(
    "caps, asked, message",
    [
        (CPU, "fp16", "does not run on the CPU"),
        (CPU, "16-true", "does not run on the CPU"),
        (TURING, "bf16", "no bf16 support"),
        (AMPERE, "fp8", "is not known"),
    ],
)
def test_a_precision_the_hardware_cannot_run_is_a_usage_error(caps, asked, message):
    with pytest.raises(UsageError, match=message):
        choose_precision(caps, asked)


def test_one_device_keeps_lightnings_default_strategy_and_the_whole_batch():
    p = plan(None, None, None, 16, env={})
    assert (p.world, p.strategy, p.per_device_batch, p.forks) == (1, "auto", 16, False)
    assert p.describe() == "1 device"


def test_several_devices_fork_from_here_unless_a_launcher_started_the_ranks():
    forked = plan(2, 1, None, 16, env={})
    assert (forked.strategy, forked.per_device_batch, forked.forks) == ("ddp_fork", 8, True)
    torchrun = {"LOCAL_RANK": "1", "WORLD_SIZE": "8", "RANK": "5"}
    assert launched_externally(torchrun) and launched_externally({"SLURM_NTASKS": "4"})
    under = plan(4, 2, None, 64, env=torchrun)
    assert (under.world, under.strategy, under.per_device_batch, under.forks) == (8, "ddp", 8, False)
    # several machines without torchrun: Lightning's own ddp launcher on each node
    assert plan(2, 2, None, 8, env={}).strategy == "ddp"
    # what the user names is passed on
    assert plan(2, 1, "ddp_spawn", 8, env={}).strategy == "ddp_spawn"
    unused = plan(2, 1, "ddp_fork_find_unused_parameters_true", 8, env={})
    assert unused.forks and not plan(2, 1, "ddp", 8, env={}).forks


@pytest.mark.parametrize(
    "args, message",
    [
        ((2, 1, None, 15), "does not split evenly over 2 processes"),
        ((0, 1, None, 16), "devices=0 must be a whole number"),
        ((2, 0, None, 16), "num_nodes=0 must be"),
        ((2, 1, "horovod", 16), "strategy 'horovod' is not one"),
    ],
)
def test_bad_multi_device_arguments_are_usage_errors(args, message):
    with pytest.raises(UsageError, match=message):
        plan(*args, env={})


def test_the_sampler_gives_each_step_the_same_rows_on_one_device_and_on_two():
    pytest.importorskip("lightning", reason="lightning is a tier3 extra")
    from tbkit.training.lightning_module import EpochSampler

    n, batch = 10, 4  # n odd on purpose: two processes leave one index out
    for epoch in (0, 1):
        one = EpochSampler(n, seed=3)
        one.set_epoch(epoch)
        halves = [EpochSampler(n, seed=3, rank=r, world=2) for r in (0, 1)]
        for h in halves:
            h.set_epoch(epoch)
        order, parts = list(one), [list(h) for h in halves]
        assert len(parts[0]) == len(parts[1]) == 5  # equal step counts, which DDP needs
        for step in range(2):  # global step i = rows i*4 … i*4+3 of the epoch's permutation
            global_rows = parts[0][step * 2 : step * 2 + 2] + parts[1][step * 2 : step * 2 + 2]
            assert sorted(global_rows) == sorted(order[step * batch : (step + 1) * batch])
    assert list(EpochSampler(n, 3)) != list(EpochSampler(n, 4))  # the seed matters
    first = EpochSampler(n, 3)
    second = EpochSampler(n, 3)
    second.set_epoch(1)
    assert list(first) != list(second)  # and each epoch has its own order


def test_batches_draw_the_epoch_order_when_the_first_batch_is_taken():
    """A resumed run makes the batch iterator before Lightning sets the epoch: the order must be
    the one of the epoch set by then (as with torch's lazy BatchSampler), not of epoch 0."""
    pytest.importorskip("lightning", reason="lightning is a tier3 extra")
    import torch

    from tbkit.training.lightning_module import EpochBatches, EpochSampler

    batches = EpochBatches(EpochSampler(10, seed=3), 4, torch.device("cpu"))
    early = iter(batches)
    batches.set_epoch(1)
    expected = EpochSampler(10, seed=3)
    expected.set_epoch(1)
    assert torch.cat(list(early)).tolist() == list(expected)
    assert [len(b) for b in batches] == [4, 4, 2] and len(batches) == 3


def test_tbkit_run_passes_the_multi_device_flags_to_the_tier3_options(monkeypatch):
    import argparse

    from tbkit.cli import run as cmd

    parser = argparse.ArgumentParser()
    cmd.configure(parser)
    args = parser.parse_args(["--tier", "3", "--synthetic", "--devices", "2", "--strategy", "ddp", "--num-nodes", "2"])
    seen = {}

    def fake_supervise(spec, *args, **kw):  # only the wiring is under test: nothing runs
        seen.update(spec["options"])
        return 0

    monkeypatch.setattr("tbkit.cli._supervise.supervise", fake_supervise)
    monkeypatch.setattr("tbkit.checks.report_folder.make_staging", lambda out: out)
    assert cmd.main(args) == 0
    assert (seen["train.devices"], seen["train.strategy"], seen["train.num_nodes"]) == (2, "ddp", 2)
    defaults = parser.parse_args([])
    assert (defaults.devices, defaults.strategy, defaults.num_nodes) == (None, None, None)
