"""The corpus (issue 22 item 8): every text model type in transformers' causal / masked /
seq-to-seq LM mappings, built tiny from a bare config.json, runs Tier 1 offline with no false FAIL
or ERROR. A FAIL is allowed only where ``hf_corpus.KNOWN_FAILS`` names the real property of that
model it reports. The fast subset runs by default; the whole sweep with ``-m corpus`` or
TBKIT_CORPUS=1 (CI sets it), in worker processes (``corpus_pool``) that bound its memory."""

from __future__ import annotations

import pytest

import corpus_pool
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


@pytest.fixture(scope="session")
def corpus_results(request, tmp_path_factory) -> dict:
    """The outcome of every selected type, run once for the session in worker processes."""
    selected = [
        item.callspec.params["model_type"]
        for item in request.session.items
        if item.originalname == test_every_text_model_type_runs_tier1_without_a_false_fail.__name__
    ]
    return corpus_pool.run_isolated(selected, tmp_path_factory.mktemp("corpus"))


@pytest.mark.corpus
@pytest.mark.parametrize("model_type", hf_corpus.text_model_types())
def test_every_text_model_type_runs_tier1_without_a_false_fail(model_type, corpus_results):
    result = corpus_results[model_type]
    if isinstance(result, corpus_pool.Crash):
        pytest.fail(f"{model_type}: {result.reason}")
    _judge(result)
