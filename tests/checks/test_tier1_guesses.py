"""Say what was guessed (issue 13 item 3): an inferred kind is named in kind-dependent FAILs with
the override; padding finds the mask under its common names and says which; batch_equivalence
names randomness when the model is random in eval."""

from __future__ import annotations

import dataclasses

import models as M
import tbkit


def rows_of(lm, checks, tmp_path):
    return tbkit.run(lm, checks=checks, out_dir=tmp_path, progress=False).rows


def test_an_inferred_kind_is_named_in_the_causal_fail_with_the_override(tmp_path):
    lm = M.loaded(M.build(M.LMHeadEncoder))
    guessed = dataclasses.replace(
        lm, kind="decoder", kind_reason="inferred: output size 97 equals the vocabulary (a language-model head)"
    )
    fails = [r for r in rows_of(guessed, "causal", tmp_path / "a") if r.status.value == "FAIL"]
    assert fails
    for row in fails:
        assert "'decoder' was inferred, not declared" in row.detail
        assert "output size 97 equals the vocabulary" in row.detail  # the evidence
        assert "--kind encoder" in row.detail and "kind='encoder'" in row.detail  # the override
    declared = dataclasses.replace(lm, kind="decoder", kind_reason="declared")
    fails = [r for r in rows_of(declared, "causal", tmp_path / "b") if r.status.value == "FAIL"]
    assert fails and not any("inferred" in r.detail for r in fails)
    # and the override works: declared an encoder, causal does not apply
    (row,) = rows_of(dataclasses.replace(lm, kind="encoder", kind_reason="declared"), "causal", tmp_path / "c")
    assert row.status.value == "SKIP" and "bidirectional" in row.detail


def test_padding_uses_a_mask_taken_as_mask_and_says_so(tmp_path):
    rows = rows_of(M.loaded(M.build(M.MaskKwargDecoder)), "padding", tmp_path)
    assert {r.status.value for r in rows} == {"PASS"}, [r.detail for r in rows]
    right = [r for r in rows if r.metric.startswith("real-position change")]
    assert len(right) == 2 and all("mask passed as `mask=`, int, 1 = keep, measured" in r.detail for r in right)


def test_padding_uses_torch_key_padding_convention_for_src_key_padding_mask(tmp_path):
    rows = rows_of(M.loaded(M.build(M.KeyPaddingMaskEncoder)), "padding", tmp_path)
    assert [r.status.value for r in rows] == ["PASS", "PASS"], [r.detail for r in rows]
    assert all("`src_key_padding_mask=`, bool, True = padding, measured" in r.detail for r in rows)


def test_batch_equivalence_names_randomness_when_the_model_is_random_in_eval(tmp_path):
    rows = rows_of(M.loaded(M.build(M.DropoutInEvalDecoder)), "batch_equivalence,determinism", tmp_path)
    by_check = {r.check: r for r in rows}
    assert by_check["determinism"].status.value == "FAIL"
    batch = by_check["batch_equivalence"]
    assert batch.status.value in ("WARN", "FAIL") and "random in eval" in batch.detail
    assert "rows of a batch influence each other" not in batch.detail


def test_batch_equivalence_blames_the_batch_when_the_model_is_deterministic(tmp_path):
    (row,) = rows_of(M.loaded(M.build(M.BatchMixingDecoder)), "batch_equivalence", tmp_path)
    assert row.status.value == "FAIL" and "rows of a batch influence each other" in row.detail
    assert "random in eval" not in row.detail
