"""Tier 3 checks: overfit passes on a healthy decoder and fails on one that cannot learn; train,
hpo and baseline skip without data and run on synthetic data when asked (labelled); the paired
test and the parameter-matched reference are correct."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from models import HealthyDecoder, HealthyEncoder, build, loaded
from tbkit.checks.base import CheckContext, Status
from tbkit.checks.tier3 import baseline, common, hpo, overfit


class InputBlindDecoder(nn.Module):
    """Logits from a learned vector that never sees the input: it can learn token frequencies and
    nothing else, so it cannot memorise a batch."""

    KIND = "decoder"

    def __init__(self, vocab: int = 97, d: int = 32) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)  # present (vocab is read from it) but unused by forward
        self.state = nn.Parameter(torch.randn(d) * 0.02)
        self.head = nn.Linear(d, vocab)

    def forward(self, input_ids, attention_mask=None):
        B, T = input_ids.shape
        return self.head(self.state).expand(B, T, -1)


def _ctx(lm, check_id: str, **options) -> CheckContext:
    ctx = CheckContext(model=lm, device=torch.device("cpu"), seed=0, options=options)
    ctx.check_id, ctx.tier = check_id, 3
    return ctx


def _rows(func, ctx):
    return {r.metric: r for r in func(ctx)}


# ---- overfit ---------------------------------------------------------------------------------
def test_overfit_passes_on_the_healthy_decoder_and_leaves_it_alone():
    lm = loaded(build(HealthyDecoder))
    before = {k: v.clone() for k, v in lm.module.state_dict().items()}
    lm.module.train()
    ctx = _ctx(lm, "overfit")
    rows = _rows(overfit.check_overfit, ctx)
    assert rows["loss_drop"].status is Status.PASS and rows["loss_drop"].value > 0.9
    assert rows["reproduces_sequence"].status is Status.PASS
    assert "teacher-forced argmax" in rows["reproduces_sequence"].detail
    assert all(torch.equal(before[k], v) for k, v in lm.module.state_dict().items())
    assert lm.module.training  # the caller's mode is untouched too
    assert [f.name for f in ctx.figures] == ["loss"]


def test_overfit_fails_on_a_model_whose_output_ignores_its_input():
    rows = _rows(overfit.check_overfit, _ctx(loaded(build(InputBlindDecoder)), "overfit"))
    assert rows["loss_drop"].status is Status.FAIL and rows["loss_drop"].value < 0.5
    assert "cannot fit one fixed batch" in rows["loss_drop"].detail
    assert rows["reproduces_sequence"].status is Status.FAIL


def test_overfit_skips_hidden_state_outputs_with_the_reason():
    (row,) = list(overfit.check_overfit(_ctx(loaded(build(HealthyEncoder)), "overfit")))
    assert row.status is Status.SKIP and "hidden states of width 32" in row.detail


# ---- data-needing checks skip without data ------------------------------------------------------
@pytest.mark.parametrize("check_id", ["train", "hpo", "baseline"])
def test_training_checks_skip_without_data_and_install_nothing(check_id, monkeypatch, tmp_path):
    """Without data the SKIP comes before the install gate: no lightning/optuna just to say 'no data'."""
    import importlib
    import io
    import sys

    import tbkit

    calls = []
    importlib.import_module("tbkit.guard.gate")
    monkeypatch.setattr(sys.modules["tbkit.guard.gate"], "ensure", lambda *reqs, **kw: calls.append(reqs))
    report = tbkit.run(
        loaded(build(HealthyDecoder)), checks=[check_id], out_dir=tmp_path, progress=False, stream=io.StringIO()
    )
    (row,) = report.rows
    assert row.check == check_id and row.status is Status.SKIP and row.detail == common.NO_DATA
    assert calls == []


# ---- statistics and the reference --------------------------------------------------------------
def test_t_distribution_matches_tables():
    # two-sided 5% critical values: df 2 -> 4.303, df 4 -> 2.776, df 30 -> 2.042
    assert 2 * baseline.t_sf(4.302653, 2) == pytest.approx(0.05, abs=1e-6)
    assert 2 * baseline.t_sf(2.776445, 4) == pytest.approx(0.05, abs=1e-6)
    assert baseline.t_quantile(0.975, 30) == pytest.approx(2.042272, abs=1e-5)
    assert 2 * baseline.t_sf(1.0, 1) == pytest.approx(0.5, abs=1e-9)  # Cauchy: P(|T|>1) = 1/2


def test_paired_t_test_by_hand():
    a, b = [3.1, 3.3, 3.2], [3.0, 3.05, 3.1]
    d = [0.1, 0.25, 0.1]
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    res = baseline.paired_t_test(a, b)
    assert res["mean"] == pytest.approx(mean) and res["df"] == 2
    assert res["t"] == pytest.approx(mean / (sd / math.sqrt(3)))
    assert res["lo"] < mean < res["hi"]
    assert res["p"] == pytest.approx(2 * baseline.t_sf(abs(res["t"]), 2))
    same = baseline.paired_t_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same["p"] == 1.0 and same["mean"] == 0.0


@pytest.mark.parametrize("V,T,d,layers", [(97, 32, 32, 2), (512, 64, 64, 2)])
def test_reference_is_parameter_matched_causal_and_its_count_formula_is_exact(V, T, d, layers):
    target = sum(p.numel() for p in HealthyDecoder(vocab=V, d=d, max_len=T).parameters())
    cfg = baseline.match_reference(target, V, T)
    ref = baseline.ReferenceDecoder(V, T, **cfg)
    real = sum(p.numel() for p in ref.parameters())
    assert real == cfg["params"] == baseline.reference_param_count(V, T, cfg["d_model"], cfg["layers"])
    assert abs(real / target - 1) <= baseline.PARAM_MATCH_TOL
    # causal under eval + no_grad too (the fused path must not drop the mask)
    ref.eval()
    ids = torch.randint(0, V, (2, 12))
    other = ids.clone()
    other[:, 8:] = (other[:, 8:] + 1) % V
    with torch.no_grad():
        a, b = ref(ids), ref(other)
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6) and not torch.allclose(a[:, 8:], b[:, 8:])
    # nn.TransformerEncoder deep-copies its layer: ours re-initialises each one
    w = [lyr.linear1.weight for lyr in ref.encoder.layers]
    assert len(w) == 1 or not torch.equal(w[0], w[1])


# ---- the data-needing checks, on synthetic data (asked for) -------------------------------------
@pytest.mark.slow
def test_baseline_fails_a_model_that_cannot_beat_the_reference():
    pytest.importorskip("lightning", reason="lightning is a tier3 extra (scripts/test.sh installs .[all])")
    ctx = _ctx(
        loaded(build(InputBlindDecoder)),
        "baseline",
        synthetic=True,
        max_len=16,
        baseline_steps=40,
        batch_size=16,
        lr=3e-3,
    )
    rows = _rows(baseline.check_baseline, ctx)
    test = rows["model_minus_reference"]
    assert test.status is Status.FAIL and test.value > 0
    assert "paired t-test over 3 seeds" in test.detail and "p = " in test.detail and "95% CI" in test.detail
    assert rows["model_vs_unigram"].status is Status.WARN  # frequencies are all it can learn
    assert rows["uniform_loss"].value == pytest.approx(math.log(97), abs=1e-4)
    assert all(r.detail.startswith("[SYNTHETIC DATA") for r in rows.values())
    assert "fresh init" in rows["model_loss"].detail  # its constructor takes defaults: re-built per seed


@pytest.mark.slow
def test_tier3_through_the_runner_on_synthetic_data(tmp_path):
    pytest.importorskip("lightning", reason="lightning is a tier3 extra (scripts/test.sh installs .[all])")
    pytest.importorskip("optuna_integration", reason="optuna-integration is a tier3 extra")
    import tbkit

    # baseline is exercised on its own above; here train and hpo go through the runner and the gate
    options = dict(synthetic=True, max_len=16, batch_size=16, lr=3e-3, train_epochs=2, hpo_trials=3, hpo_epochs=2)
    report = tbkit.run(
        loaded(build(HealthyDecoder)),
        tiers=(3,),
        checks="train,hpo",
        device="cpu",
        out_dir=tmp_path / "r",
        options=options,
        progress=False,
        stream=open("/dev/null", "w"),
    )
    rows = report.rows if hasattr(report, "rows") else report.to_dataframe().to_dict("records")

    def get(r, k):
        return getattr(r, k) if not isinstance(r, dict) else r[k]

    by = {(get(r, "check"), get(r, "metric")): r for r in rows}
    assert str(get(by[("train", "best_val_loss")], "status")) == "PASS"
    assert ("train", "val_loss_epoch_1") in by
    assert str(get(by[("hpo", "trials_completed")], "status")) == "PASS"
    for r in rows:
        if get(r, "check") in ("train", "hpo"):
            assert "SYNTHETIC" in get(r, "detail"), r
    plots = {p.name for p in (tmp_path / "r" / "plots").glob("*.png")}
    assert {"train_loss_curve.png", "hpo_history.png"} <= plots


@pytest.mark.slow
def test_tbkit_run_tier3_cli_trains_on_a_text_file(tmp_path, capsys):
    pytest.importorskip("lightning", reason="lightning is a tier3 extra (scripts/test.sh installs .[all])")
    import json

    from tbkit.cli import main

    text = tmp_path / "corpus.txt"
    text.write_text("to be or not to be, that is the question. " * 40)
    code = main(
        [
            "run",
            "tiny_gpt",
            "--checks",
            "train",
            "--data",
            str(text),
            "--out",
            str(tmp_path / "rep"),
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr()
    rows = json.loads((tmp_path / "rep" / "report.json").read_text())["rows"]
    notes = [r["detail"] for r in rows if r["metric"] == "data"]
    assert any("char-level tokenizer built from corpus.txt" in n for n in notes)
    assert not any("SYNTHETIC" in r["detail"] for r in rows)  # real data is never labelled synthetic
    best = next(r for r in rows if r["metric"] == "best_val_loss")
    assert best["status"] == "PASS"
    assert (tmp_path / "rep" / "checkpoints" / "train" / "last.ckpt").is_file()


@pytest.mark.slow
def test_tbkit_run_tier3_cli_trains_on_two_processes(tmp_path, capsys):
    """`tbkit run --devices 2` reaches Lightning: two DDP processes (gloo on CPU), the row says so."""
    pytest.importorskip("lightning", reason="lightning is a tier3 extra (scripts/test.sh installs .[all])")
    import json

    from tbkit.cli import main

    text = tmp_path / "corpus.txt"
    text.write_text("to be or not to be, that is the question. " * 40)
    argv = ["run", "tiny_gpt", "--checks", "train", "--data", str(text), "--out", str(tmp_path / "rep")]
    code = main([*argv, "--device", "cpu", "--devices", "2", "--no-progress"])
    assert code == 0, capsys.readouterr()
    rows = json.loads((tmp_path / "rep" / "report.json").read_text())["rows"]
    best = next(r for r in rows if r["metric"] == "best_val_loss")
    assert best["status"] == "PASS" and "2 processes" in best["detail"], best["detail"]


def test_baseline_rebuilds_per_seed_only_when_the_constructor_gives_the_same_architecture():
    assert baseline._fresh_builder(HealthyDecoder()) is HealthyDecoder
    # built with other sizes than its defaults: cls() would make another model, so no rebuild
    assert baseline._fresh_builder(HealthyDecoder(vocab=50)) is None


class NaNLogitsDecoder(InputBlindDecoder):
    """Trainable, but every logit is NaN: no trial can complete."""

    def forward(self, input_ids, attention_mask=None):
        return super().forward(input_ids) * float("nan")


def test_hpo_fails_when_no_trial_completes():
    pytest.importorskip("optuna_integration", reason="optuna-integration is a tier3 extra")
    pytest.importorskip("lightning", reason="lightning is a tier3 extra")
    ctx = _ctx(loaded(build(NaNLogitsDecoder)), "hpo", synthetic=True, max_len=16, hpo_trials=2, hpo_epochs=1)
    rows = _rows(hpo.check_hpo, ctx)
    row = rows["trials_completed"]
    assert row.status is Status.FAIL and row.value == 0
    assert "0 completed" in row.detail and "best_val_loss" not in rows
