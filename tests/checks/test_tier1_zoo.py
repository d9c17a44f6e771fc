"""Tier 1 tells models apart: healthy zoo models never FAIL; each broken one is FAILed by the
check that is about its bug (see BROKEN_BY in tests/support/models.py)."""

from __future__ import annotations

import pytest
import torch

import models as M
import tbkit
from tbkit.checks import checks_for

# platform-independent: also run against each built wheel by the release workflow (-m quick)
pytestmark = pytest.mark.quick

FAST = {"speed_seconds_per_point": 0.02}
# memory and speed only measure; leaving them out keeps the broken-model runs short
CORRECTNESS = "summary,shape,batch_equivalence,causal,padding,stability,determinism,init,gradient_flow"


def statuses(report, check):
    return {r.status.value for r in report.rows if r.check == check}


@pytest.mark.parametrize("cls", M.HEALTHY, ids=lambda c: c.__name__)
def test_healthy_models_never_fail(cls, tmp_path):
    report = tbkit.run(M.loaded(M.build(cls)), out_dir=tmp_path, progress=False, options=FAST)
    bad = [(r.check, r.metric, r.detail[:200]) for r in report.rows if r.status.value in ("FAIL", "ERROR")]
    assert not bad, bad
    assert {r.check for r in report.rows} == {s.id for s in checks_for([1])}
    # correctness checks are PASS (or SKIP with a reason), not merely "not FAIL"
    for check in ("shape", "batch_equivalence", "padding", "determinism"):
        assert statuses(report, check) == {"PASS"}, (check, [r.detail for r in report.rows if r.check == check])
    expected_causal = {"SKIP"} if cls.KIND == "encoder" else {"PASS"}
    assert statuses(report, "causal") == expected_causal


@pytest.mark.parametrize("cls", M.BROKEN, ids=lambda c: c.__name__)
def test_broken_models_flagged_by_the_right_check(cls, tmp_path):
    report = tbkit.run(M.loaded(M.build(cls)), checks=CORRECTNESS, out_dir=tmp_path, progress=False)
    assert report.verdict.value == "FAIL"
    for check in cls.BROKEN_BY:
        assert "FAIL" in statuses(report, check), (check, [(r.status, r.detail[:200]) for r in report.rows])
    assert not [r for r in report.rows if r.status.value == "ERROR"], [
        r.detail for r in report.rows if r.status.value == "ERROR"
    ]


def test_is_causal_trap_is_caught_under_no_grad_and_named_in_grad_mode(tmp_path):
    report = tbkit.run(M.loaded(M.build(M.IsCausalNoMaskDecoder)), checks="causal", out_dir=tmp_path, progress=False)
    rows = {r.metric: r for r in report.rows}
    grad = rows["max change at t < s (grad)"]
    assert grad.status.value == "FAIL" and "is_causal" in grad.detail
    for mode in ("no_grad", "inference_mode"):
        row = rows[f"max change at t < s ({mode})"]
        assert row.status.value == "FAIL" and row.value > 1e-3 and "sees the future" in row.detail


def test_leaky_mask_names_the_position_that_sees_the_future(tmp_path):
    report = tbkit.run(M.loaded(M.build(M.LeakyMaskDecoder)), checks="causal", out_dir=tmp_path, progress=False)
    assert {r.status.value for r in report.rows} == {"FAIL"}
    assert "input token 1 moved the output at position 0" in report.rows[0].detail


def test_unused_layer_is_named_as_disconnected(tmp_path):
    report = tbkit.run(
        M.loaded(M.build(M.UnusedLayerDecoder)), checks="gradient_flow", out_dir=tmp_path, progress=False
    )
    row = next(r for r in report.rows if r.metric == "parameters without gradient")
    assert row.status.value == "FAIL" and row.value == 2
    assert "disconnected: unused_proj.weight, unused_proj.bias" in row.detail


def test_dropout_in_eval_is_flagged_by_determinism_with_the_reason(tmp_path):
    report = tbkit.run(
        M.loaded(M.build(M.DropoutInEvalDecoder)), checks="determinism", out_dir=tmp_path, progress=False
    )
    (row,) = report.rows
    assert row.status.value == "FAIL" and "training=True" in row.detail


def test_causal_check_is_not_fooled_by_randomness_in_eval(tmp_path):
    """Comparisons reseed per forward: a causal model with dropout stuck on is a determinism
    problem, not a causality one."""
    report = tbkit.run(M.loaded(M.build(M.DropoutInEvalDecoder)), checks="causal", out_dir=tmp_path, progress=False)
    assert {r.status.value for r in report.rows} == {"PASS"}


def test_nan_for_long_inputs_fails_stability_at_max_len_but_not_at_length_1(tmp_path):
    report = tbkit.run(
        M.loaded(M.build(M.NaNForLongInputsDecoder)), checks="stability", out_dir=tmp_path, progress=False
    )
    rows = {r.metric: r.status.value for r in report.rows}
    assert rows["max |output|: length 1"] == "PASS"
    assert rows[f"max |output|: length {M.MAX_LEN} (max)"] == "FAIL"


def test_wild_init_fails_loss_at_init_and_warns_on_weight_scale(tmp_path):
    report = tbkit.run(M.loaded(M.build(M.WildInitDecoder)), checks="init", out_dir=tmp_path, progress=False)
    rows = {r.metric: r for r in report.rows}
    assert rows["loss at init"].status.value == "FAIL"
    assert rows["loss at init"].value > 2 * torch.log(torch.tensor(float(M.VOCAB)))
    assert rows["max weight gain std*sqrt(fan_in)"].status.value == "WARN"


def test_padding_ignoring_encoder_fails_padding_in_both_grad_modes(tmp_path):
    report = tbkit.run(M.loaded(M.build(M.PaddingIgnoringEncoder)), checks="padding", out_dir=tmp_path, progress=False)
    assert [r.status.value for r in report.rows] == ["FAIL", "FAIL"]
    assert {r.metric for r in report.rows} == {"real-position change (grad)", "real-position change (no_grad)"}


class NoMaskDecoder(M.HealthyDecoder):
    def forward(self, input_ids):  # no attention_mask argument at all
        return super().forward(input_ids)


def test_model_without_attention_mask_gets_a_plain_warning(tmp_path):
    report = tbkit.run(M.loaded(M.build(NoMaskDecoder)), checks="padding", out_dir=tmp_path, progress=False)
    (row,) = report.rows
    assert row.status.value == "WARN" and "takes no attention_mask" in row.detail


class FullyMaskedNaNDecoder(torch.nn.Module):
    """Hand-written softmax attention that masks padded *queries* entirely with -inf: their rows
    are softmax over nothing (NaN), and the NaN reaches real positions in the next layer through
    0 * NaN. (torch's own MultiheadAttention now returns zeros for fully masked rows.)"""

    KIND = "decoder"

    def __init__(self, vocab=M.VOCAB, d=M.D_MODEL, max_len=M.MAX_LEN):
        super().__init__()
        self.tok = torch.nn.Embedding(vocab, d)
        self.pos = torch.nn.Embedding(max_len, d)
        self.qkv = torch.nn.ModuleList(torch.nn.Linear(d, 3 * d) for _ in range(2))
        self.head = torch.nn.Linear(d, vocab)

    def forward(self, input_ids, attention_mask=None):
        B, T = input_ids.shape
        x = self.tok(input_ids) + self.pos(torch.arange(T))
        allowed = torch.ones(T, T, dtype=torch.bool).tril()[None].expand(B, T, T)
        if attention_mask is not None:
            real = attention_mask.bool()
            allowed = allowed & real[:, None, :] & real[:, :, None]  # the bug: pad queries see nothing
        for qkv in self.qkv:
            q, k, v = qkv(x).chunk(3, dim=-1)
            scores = (q @ k.transpose(1, 2) / q.shape[-1] ** 0.5).masked_fill(~allowed, float("-inf"))
            x = x + scores.softmax(-1) @ v
        return self.head(x)


def test_nan_from_fully_masked_rows_fails_padding(tmp_path):
    report = tbkit.run(M.loaded(M.build(FullyMaskedNaNDecoder)), checks="padding", out_dir=tmp_path, progress=False)
    right, left = report.rows[:2], report.rows[2]
    assert [r.status.value for r in right] == ["FAIL", "FAIL"]
    assert all("fully masked rows" in r.detail for r in right)
    # left padding (batched generation) is judged on finiteness only, as a warning
    assert (left.metric, left.status.value) == ("left padding, real positions finite (no_grad)", "WARN")
