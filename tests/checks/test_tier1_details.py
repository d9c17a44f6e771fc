"""Tier 1 details: the shared input builders, lengths when a model has no limit, the memory budget,
the speed timer's threads, and the max_len + 1 probe."""

from __future__ import annotations

import torch

import models as M
import tbkit
from tbkit.checks import inputs


def test_token_ids_are_seeded_in_range_and_avoid_the_pad_token():
    lm = M.loaded(M.build(M.HealthyDecoder))
    lm.pad_token_id = 5
    a = inputs.token_ids(lm, 64, 32, torch.Generator().manual_seed(1))
    b = inputs.token_ids(lm, 64, 32, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.dtype == torch.long and a.shape == (64, 32)
    assert int(a.min()) >= 0 and int(a.max()) < M.VOCAB
    assert not bool((a == 5).any())
    assert len(a.unique()) > M.VOCAB // 2  # the whole vocabulary is used, not a corner of it


def test_different_tokens_differ_everywhere_and_right_pad_masks_the_tail():
    lm = M.loaded(M.build(M.HealthyDecoder))
    gen = torch.Generator().manual_seed(0)
    ids = inputs.token_ids(lm, 3, 10, gen)
    other = inputs.different_tokens(lm, ids, gen)
    assert bool((other != ids).all()) and int(other.max()) < M.VOCAB
    padded, mask = inputs.right_pad(lm, ids, [10, 4, 1])
    assert mask.tolist()[1] == [1] * 4 + [0] * 6 and mask.tolist()[2] == [1] + [0] * 9
    assert torch.equal(padded[1, :4], ids[1, :4]) and bool((padded[1, 4:] == lm.pad_token_id).all())
    refilled, _ = inputs.right_pad(lm, ids, [10, 4, 1], fill=other)
    assert torch.equal(refilled[1, 4:], other[1, 4:])


def test_lengths_are_capped_and_said_when_the_model_has_no_limit(tmp_path):
    lm = M.loaded(M.build(M.HealthyDecoder, max_len=256), max_len=None)
    assert inputs.usable_max_len(lm) == inputs.DEFAULT_MAX_LEN == 128
    report = tbkit.run(lm, checks="shape,stability", out_dir=tmp_path, progress=False)
    shape = {r.metric: r for r in report.rows if r.check == "shape"}
    assert shape["shapes correct"].status.value == "PASS"
    assert "used 128 tokens as the longest input" in shape["shapes correct"].detail
    assert shape["max_len + 1"].status.value == "SKIP"
    assert any(r.metric == "max |output|: length 128 (max)" for r in report.rows)


def test_max_len_plus_one_reports_a_clear_error_or_that_it_works(tmp_path):
    clear = tbkit.run(M.loaded(M.build(M.HealthyDecoder)), checks="shape", out_dir=tmp_path / "a", progress=False)
    row = next(r for r in clear.rows if r.metric == "max_len + 1")
    assert (row.status.value, row.value) == ("PASS", "fails clearly") and "IndexError" in row.detail
    # declared max_len 16 but a 32-row position table: one token more simply works
    works = tbkit.run(
        M.loaded(M.build(M.HealthyDecoder), max_len=16), checks="shape", out_dir=tmp_path / "b", progress=False
    )
    row = next(r for r in works.rows if r.metric == "max_len + 1")
    assert (row.status.value, row.value) == ("PASS", "works")


def test_memory_fails_only_against_a_budget(tmp_path):
    lm = M.loaded(M.build(M.HealthyDecoder))
    free = tbkit.run(lm, checks="memory", out_dir=tmp_path / "a", progress=False)
    peak = next(r for r in free.rows if r.metric == "peak activation MB")
    assert peak.status.value == "PASS" and peak.value > 0 and "saved_tensors_hooks" in peak.detail
    tight = tbkit.run(lm, checks="memory", out_dir=tmp_path / "b", progress=False, options={"memory_budget_mb": 0.01})
    assert next(r for r in tight.rows if r.metric == "peak activation MB").status.value == "FAIL"
    roomy = tbkit.run(lm, checks="memory", out_dir=tmp_path / "c", progress=False, options={"memory_budget_mb": 1e4})
    assert next(r for r in roomy.rows if r.metric == "peak activation MB").status.value == "PASS"


def test_activation_memory_grows_with_the_input(tmp_path):
    report = tbkit.run(M.loaded(M.build(M.HealthyDecoder)), checks="memory", out_dir=tmp_path, progress=False)
    detail = next(r for r in report.rows if r.metric == "peak activation MB").detail
    sizes = {
        part.split(":")[0].strip(): float(part.split(":")[1].split("MB")[0])
        for part in detail.split(". Measured")[0].split(", ")
    }
    assert sizes["B=2 T=32"] > sizes["B=1 T=32"] > sizes["B=1 T=8"] > 0


def test_speed_uses_all_torch_threads_and_reports_tokens_per_second(tmp_path):
    report = tbkit.run(
        M.loaded(M.build(M.HealthyDecoder)),
        checks="speed",
        out_dir=tmp_path,
        progress=False,
        options={"speed_seconds_per_point": 0.02},
    )
    points = [r for r in report.rows if r.metric.startswith("median ms")]
    assert [r.metric for r in points] == ["median ms (B=1, T=17)", "median ms (B=2, T=17)"]
    for row in points:
        assert row.value > 0 and f"{torch.get_num_threads()} threads" in row.detail and "tokens/s" in row.detail
    (ratio,) = [r for r in report.rows if r.metric == "tokens/s ratio, larger/smaller batch"]
    assert ratio.value > 0
    assert {r.status.value for r in report.rows} == {"PASS"}


class _NudgesOneWeight(M.HealthyDecoder):
    """Adds 1e-7 to one entry of its LM head on every call, through ``.data`` (autograd's version
    counter does not see that): the smallest self-update a forward can make."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.head.weight.data[3, 5] += 1e-7
        return super().forward(input_ids, attention_mask)


class _UnusedNaNWeight(M.HealthyDecoder):
    """Holds a parameter full of NaN that the forward never reads: its outputs are healthy."""

    def __init__(self) -> None:
        super().__init__()
        self.spare = torch.nn.Parameter(torch.full((4, 4), float("nan")))


def test_weight_drift_sees_one_tiny_update_and_not_a_nan_that_stays_nan(tmp_path):
    nudged = tbkit.run(M.loaded(M.build(_NudgesOneWeight)), checks="causal", out_dir=tmp_path / "a", progress=False)
    (row,) = nudged.rows
    assert (row.status.value, row.metric) == ("FAIL", "weights unchanged by forward") and "head.weight" in row.detail
    quiet = tbkit.run(M.loaded(M.build(_UnusedNaNWeight)), checks="causal", out_dir=tmp_path / "b", progress=False)
    assert [r.status.value for r in quiet.rows] == ["PASS"] * 3, [r.detail for r in quiet.rows]


def test_init_judges_a_bfloat16_model_without_crashing(tmp_path):
    # its identical-tensor search once copied heads through numpy, which has no bfloat16: ERROR
    lm = M.loaded(M.build(M.HealthyDecoder).to(torch.bfloat16))
    report = tbkit.run(lm, checks="init", out_dir=tmp_path, progress=False)
    statuses = {r.metric: r.status.value for r in report.rows}
    assert statuses["identical tensors across layers"] == "PASS" and "ERROR" not in statuses.values(), statuses
