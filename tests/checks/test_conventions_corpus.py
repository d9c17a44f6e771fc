"""The corpus (issue 22 item 8): every text model type in transformers' causal / masked /
seq-to-seq LM mappings, built tiny from a bare config.json, runs Tier 1 offline with no false FAIL
or ERROR. A FAIL is allowed only where ``hf_corpus.KNOWN_FAILS`` names the real property of that
model it reports. The fast subset runs by default; the whole sweep with ``-m corpus``."""

from __future__ import annotations

import pytest

import hf_corpus

transformers = pytest.importorskip("transformers", reason="transformers is not installed (CI installs it)")


def _judge(outcome) -> None:
    if outcome is None:
        pytest.skip("not a text-only config (vision, audio or composite parts)")
    if not outcome.loaded:
        # a load error must be one paragraph naming a real missing piece, never a traceback
        assert "Traceback" not in outcome.load_error and outcome.load_error, outcome
        pytest.skip(f"does not build tiny here: {outcome.load_error[:300]}")
    if outcome.model_type in hf_corpus.KNOWN_FAILS:
        assert outcome.fails, f"{outcome.model_type} no longer fails: drop it from KNOWN_FAILS"
        return
    assert outcome.fails == [], outcome.fails


@pytest.mark.slow
@pytest.mark.parametrize("model_type", hf_corpus.FAST_TYPES)
def test_fast_subset_runs_tier1_clean(model_type, tmp_path):
    outcome = hf_corpus.run_type(model_type, tmp_path)
    assert outcome is not None and outcome.loaded, outcome
    _judge(outcome)
    rows = dict(outcome.conventions)
    assert "maximum length" in rows and "layout" in rows


@pytest.mark.corpus
@pytest.mark.parametrize("model_type", hf_corpus.text_model_types())
def test_every_text_model_type_runs_tier1_without_a_false_fail(model_type, tmp_path):
    _judge(hf_corpus.run_type(model_type, tmp_path))
