"""Tier 2 checks on the model zoo (tests/support/models.py) plus a few models made here for one purpose each.

The checks are called directly through the registry so these tests do not depend on the runner;
tests/checks/test_tier2_gate.py covers the runner + install gate path. Attribution tests need captum
importable in the interpreter running pytest (scripts/test.sh installs it with `.[all]`).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import models as zoo
from tbkit.checks import (
    CheckContext,
    Status,
)
from tbkit.checks.attention_capture import capture
from tbkit.checks.base import REGISTRY
from tbkit.checks.tier2 import attribution, capacity, robustness  # importing registers the checks

CHECKS = ("attention", "attribution", "robustness", "capacity")


def run_check(lm, check_id, out_dir=None):
    ctx = CheckContext(model=lm, device=torch.device("cpu"), out_dir=out_dir, seed=0)
    ctx.check_id, ctx.tier = check_id, 2
    return list(REGISTRY[check_id].func(ctx)), ctx


def by_metric(rows):
    return {r.metric: r for r in rows}


def statuses(rows):
    return {r.status for r in rows}


def have_captum() -> bool:
    try:
        import captum.attr  # noqa: F401
    except ImportError:
        return False
    return True


needs_captum = pytest.mark.skipif(not have_captum(), reason="captum is not importable in this interpreter")


# ------------------------------------------------------------------------------------------
# models made for these tests
# ------------------------------------------------------------------------------------------
class ConvLM(nn.Module):
    """A causal conv token model: no attention anywhere, so nothing can be captured."""

    KIND = "decoder"

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(zoo.VOCAB, 32)
        self.conv = nn.Conv1d(32, 32, 3)
        self.head = nn.Linear(32, zoo.VOCAB)

    def forward(self, input_ids, attention_mask=None):
        x = F.pad(self.tok(input_ids).transpose(1, 2), (2, 0))  # left pad: causal convolution
        return self.head(torch.relu(self.conv(x)).transpose(1, 2))


class HandAttention(nn.Module):
    """Multi-head self-attention written by hand. ``style``: "softmax" (torch.softmax on the scores),
    "sdpa" (F.scaled_dot_product_attention) or "exp" (exp / sum by hand, returns its weights)."""

    def __init__(self, d=32, heads=4, style="softmax", leak=False):
        super().__init__()
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.heads, self.style, self.leak = heads, style, leak

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        allowed = torch.ones(T, T, dtype=torch.bool).tril(1 if self.leak else 0)
        if self.style == "sdpa":
            o, w = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed), None
        else:
            scores = (q @ k.transpose(-1, -2) / math.sqrt(D // self.heads)).masked_fill(~allowed, float("-inf"))
            if self.style == "softmax":
                w = torch.softmax(scores, dim=-1)
            else:
                e = (scores - scores.amax(-1, keepdim=True)).exp()
                w = e / e.sum(-1, keepdim=True)
            o = w @ v
        return self.out(o.transpose(1, 2).reshape(B, T, D)), w


class HandDecoder(nn.Module):
    KIND = "decoder"

    def __init__(self, style="softmax", leak=False):
        super().__init__()
        self.tok = nn.Embedding(zoo.VOCAB, 32)
        self.attn = HandAttention(style=style, leak=leak)
        self.ln = nn.LayerNorm(32)
        self.head = nn.Linear(32, zoo.VOCAB)

    def forward(self, input_ids, attention_mask=None):
        x = self.tok(input_ids)
        a, _ = self.attn(x)
        return self.head(self.ln(x + a))


class HashEncoder(nn.Module):
    """Every position predicts from (sum of all ids) mod V: changing any one token changes every
    prediction, the most fragile model there is."""

    KIND = "encoder"

    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(zoo.VOCAB, zoo.VOCAB)

    def forward(self, input_ids, attention_mask=None):
        h = input_ids.sum(dim=1, keepdim=True).expand_as(input_ids) % zoo.VOCAB
        return self.tok(h) * 10.0


class CollapsingEncoder(nn.Module):
    """Each block pulls every token halfway to the sequence mean: representations collapse with depth,
    and one weight matrix is rank one."""

    KIND = "encoder"

    class Mix(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.lin = nn.Linear(d, d)
            self.ln = nn.LayerNorm(d)

        def forward(self, x):
            return self.ln(self.lin(x.mean(dim=1, keepdim=True) + 0.02 * x))

    def __init__(self, d=32, layers=4):
        super().__init__()
        self.tok = nn.Embedding(zoo.VOCAB, d)
        self.blocks = nn.ModuleList(self.Mix(d) for _ in range(layers))
        with torch.no_grad():
            self.blocks[0].lin.weight.copy_(torch.outer(torch.randn(d), torch.randn(d)))

    def forward(self, input_ids, attention_mask=None):
        x = self.tok(input_ids)
        for b in self.blocks:
            x = b(x)
        return x


# ------------------------------------------------------------------------------------------
# the suite's models
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", zoo.HEALTHY, ids=lambda c: c.__name__)
def test_healthy_models_give_no_fail(cls, tmp_path):
    lm = zoo.loaded(zoo.build(cls))
    for check_id in CHECKS:
        if check_id == "attribution" and not have_captum():
            continue
        rows, ctx = run_check(lm, check_id, out_dir=tmp_path)
        assert rows, check_id
        bad = [r for r in rows if r.status in (Status.FAIL, Status.ERROR)]
        assert not bad, f"{cls.__name__} {check_id}: {bad}"
        if check_id == "attention":
            assert not any(r.status is Status.SKIP for r in rows), rows  # MHA weights must be captured
            assert by_metric(rows)["capture_output_change"].value <= 1e-4
    # heatmaps and curves were written as PNG files
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert any(n.startswith("attention_heads") for n in pngs), pngs
    assert "robustness_degradation.png" in pngs and "capacity_effective_rank.png" in pngs


def test_leaky_mask_decoder_is_caught_by_attention():
    rows, _ = run_check(zoo.loaded(zoo.build(zoo.LeakyMaskDecoder)), "attention")
    row = by_metric(rows)["future_key_mass"]
    assert row.status is Status.FAIL
    assert row.value > 0.01 and "blocks.0.attn head" in row.detail and "future keys" in row.detail
    healthy, _ = run_check(zoo.loaded(zoo.build(zoo.HealthyDecoder)), "attention")
    assert by_metric(healthy)["future_key_mass"].status is Status.PASS
    assert by_metric(healthy)["future_key_mass"].value <= 1e-6


@needs_captum
def test_leaky_mask_decoder_is_caught_by_attribution():
    rows, _ = run_check(zoo.loaded(zoo.build(zoo.LeakyMaskDecoder)), "attribution")
    m = by_metric(rows)
    assert m["future_attribution_share"].status is Status.FAIL, rows
    assert m["future_attribution_share"].value > 1e-3
    assert m["convergence_delta_rel"].status is Status.PASS  # the finding is not numerical noise
    healthy, _ = run_check(zoo.loaded(zoo.build(zoo.HealthyDecoder)), "attribution")
    assert by_metric(healthy)["future_attribution_share"].status is Status.PASS
    assert by_metric(healthy)["future_attribution_share"].value == 0.0


def test_is_causal_without_mask_is_a_fail_not_a_crash():
    rows, _ = run_check(zoo.loaded(zoo.build(zoo.IsCausalNoMaskDecoder)), "attention")
    (row,) = rows
    assert row.status is Status.FAIL and row.metric == "forward_in_grad_mode"
    assert "is_causal" in row.detail and "generate_square_subsequent_mask" in row.detail


def test_model_without_attention_is_skipped_with_the_reason():
    rows, _ = run_check(zoo.loaded(zoo.build(ConvLM)), "attention")
    (row,) = rows
    assert row.status is Status.SKIP
    assert "no attention weights could be captured" in row.detail and "Conv1d" in row.detail


# ------------------------------------------------------------------------------------------
# attention capture
# ------------------------------------------------------------------------------------------
def test_mha_capture_leaves_outputs_and_callers_contract_alone():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    seen = {}

    class Caller(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x):
            # positional need_weights=False, then the default (head-averaged) weights
            out, none = self.mha(x, x, x, None, False)
            out2, avg = self.mha(x, x, x)
            seen["none"], seen["avg"] = none, avg
            return out + out2

    caller = Caller().eval()
    with torch.no_grad():
        _, reference_avg = mha(x, x, x)
    result = capture(lambda: caller(x), caller, 2, {5})
    assert result.max_output_change <= 1e-6
    assert seen["none"] is None  # asked for no weights, got none
    torch.testing.assert_close(seen["avg"], reference_avg)  # asked for the average, got it
    assert [m.weights.shape for m in result.maps] == [torch.Size([2, 4, 5, 5])] * 2
    torch.testing.assert_close(result.maps[1].weights.mean(dim=1), reference_avg)


def test_encoder_fast_path_is_bypassed_and_restored():
    enc = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 2, enable_nested_tensor=False
    ).eval()
    before = torch.backends.mha.get_fastpath_enabled()
    x = torch.randn(2, 6, 16)
    result = capture(lambda: enc(x), enc, 2, {6})
    assert [m.layer for m in result.maps] == ["layers.0.self_attn", "layers.1.self_attn"]
    assert torch.backends.mha.get_fastpath_enabled() == before
    assert result.max_output_change <= 1e-5


@pytest.mark.parametrize("style", ["softmax", "sdpa", "exp"])
def test_hand_written_attention_is_captured_and_leaks_seen(style):
    torch.manual_seed(0)
    healthy = HandDecoder(style=style)
    lm = zoo.loaded(healthy)
    ids = torch.randint(0, zoo.VOCAB, (2, 7))
    result = capture(lambda: lm(ids), healthy, 2, {7})
    (m,) = result.maps
    assert m.source == {"softmax": "softmax", "sdpa": "scaled_dot_product_attention", "exp": "returned"}[style]
    assert m.layer == "attn" and m.weights.shape == (2, 4, 7, 7)
    # the captured weights are the ones the module computed
    with torch.no_grad():
        _, own = HandAttention.forward(_as(healthy.attn, "softmax"), healthy.tok(ids))
    torch.testing.assert_close(m.weights, own, atol=1e-6, rtol=1e-5)

    leaky = zoo.loaded(HandDecoder(style=style, leak=True))
    rows, _ = run_check(leaky, "attention")
    assert by_metric(rows)["future_key_mass"].status is Status.FAIL
    rows, _ = run_check(lm, "attention")
    assert by_metric(rows)["future_key_mass"].status is Status.PASS


def _as(module, style):
    clone = HandAttention(style=style)
    clone.load_state_dict(module.state_dict())
    return clone


def test_identical_heads_are_reported_redundant():
    torch.manual_seed(0)
    model = zoo.build(zoo.HealthyDecoder)
    attn = model.blocks[0].attn
    d, hd = attn.embed_dim, attn.head_dim
    with torch.no_grad():
        w = attn.in_proj_weight
        w[:d].mul_(8.0)  # sharper attention, so heads are far from uniform
        for block in (0, d):  # copy head 0's query and key rows onto head 1
            w[block + hd : block + 2 * hd] = w[block : block + hd]
    rows, _ = run_check(zoo.loaded(model), "attention")
    row = by_metric(rows)["redundant_head_pairs"]
    assert row.status is Status.WARN and row.value >= 1
    assert "blocks.0.attn heads 0&1" in row.detail
    plain, _ = run_check(zoo.loaded(zoo.build(zoo.HealthyDecoder)), "attention")
    assert by_metric(plain)["redundant_head_pairs"].status is Status.PASS


# ------------------------------------------------------------------------------------------
# robustness
# ------------------------------------------------------------------------------------------
def test_substitution_changes_exactly_k_positions_to_other_tokens():
    lm = zoo.loaded(zoo.build(zoo.HealthyDecoder))
    ids = torch.randint(0, zoo.VOCAB, (4, 30), generator=torch.Generator().manual_seed(1))
    for k in (1, 3, 6):
        positions, perturbed = robustness.substitute(lm, ids, k, torch.Generator().manual_seed(k))
        changed = perturbed != ids
        assert changed.sum(dim=1).tolist() == [k] * 4
        assert torch.equal(changed.nonzero()[:, 1].view(4, k), positions)
    # seeded: the same generator seed gives the same substitution
    a = robustness.substitute(lm, ids, 3, torch.Generator().manual_seed(9))[1]
    b = robustness.substitute(lm, ids, 3, torch.Generator().manual_seed(9))[1]
    assert torch.equal(a, b)


def test_decoder_comparison_excludes_positions_before_the_first_substitution():
    positions = torch.tensor([[3, 5]])
    keep = robustness._positions_to_compare("decoder", positions, 8, 8)
    assert keep.tolist() == [[False, False, False, False, True, False, True, True]]
    keep = robustness._positions_to_compare("encoder", positions, 8, 8)
    assert keep.tolist() == [[True, True, True, False, True, False, True, True]]


def test_fragile_model_warns_at_one_percent():
    rows, _ = run_check(zoo.loaded(zoo.build(HashEncoder)), "robustness")
    first = rows[0]
    assert first.metric == "top1_agreement@1%" and first.status is Status.WARN and first.value < 0.5
    healthy, _ = run_check(zoo.loaded(zoo.build(zoo.HealthyDecoder)), "robustness")
    assert [r.metric for r in healthy] == [
        "top1_agreement@1%",
        "top1_agreement@5%",
        "top1_agreement@10%",
        "top1_agreement@20%",
    ]
    assert healthy[0].status is Status.PASS and healthy[0].value >= 0.5


# ------------------------------------------------------------------------------------------
# capacity
# ------------------------------------------------------------------------------------------
def test_effective_rank_reference_values():
    assert capacity.effective_rank(torch.eye(8)) == pytest.approx(8.0)
    assert capacity.effective_rank(torch.outer(torch.randn(10), torch.randn(6))) == pytest.approx(1.0, abs=1e-4)
    big = torch.randn(5000, 16)  # the Gram-matrix path
    assert capacity.effective_rank(big) == pytest.approx(capacity.effective_rank(big[:4000]), rel=0.02)


def test_collapsing_model_warns_on_weights_and_hidden_states():
    rows, _ = run_check(zoo.loaded(zoo.build(CollapsingEncoder)), "capacity")
    m = by_metric(rows)
    assert (
        m["weight_erank_ratio_min"].status is Status.WARN
        and "blocks.0.lin.weight" in m["weight_erank_ratio_min"].detail
    )
    assert m["hidden_erank_ratio_min"].status is Status.WARN
    assert "blocks.0" in m["hidden_erank_ratio_min"].detail


# ------------------------------------------------------------------------------------------
# attribution
# ------------------------------------------------------------------------------------------
def test_input_embedding_is_found_generically():
    dec = zoo.build(zoo.HealthyDecoder)
    emb, how = attribution.find_input_embedding(zoo.loaded(dec))
    assert emb is dec.tok and "tok" in how  # the first nn.Embedding with vocab rows (pos has 32)

    class WithGetter(zoo.HealthyDecoder):
        def get_input_embeddings(self):
            return self.tok

    emb, how = attribution.find_input_embedding(zoo.loaded(zoo.build(WithGetter)))
    assert how.endswith("get_input_embeddings()")
    emb, why = attribution.find_input_embedding(zoo.loaded(dec, vocab_size=1000))
    assert emb is None and "no input embedding found" in why


@needs_captum
def test_attribution_without_embedding_is_skipped():
    rows, _ = run_check(zoo.loaded(zoo.build(zoo.HealthyDecoder), vocab_size=1000), "attribution")
    (row,) = rows
    assert row.status is Status.SKIP and "get_input_embeddings" in row.detail


# ------------------------------------------------------------------------------------------
# through the runner
# ------------------------------------------------------------------------------------------
@needs_captum
def test_runner_flags_the_leaky_decoder_in_tier1_and_tier2(tmp_path, monkeypatch):
    """Through tbkit.run. The gate is stood in for by a recorder: this pytest process shares the
    machine with others whose installs the probe rightly reports (the gate would then refuse), and
    the real gate path is tested in isolated venvs in test_tier2_gate.py."""
    import tbkit
    import tbkit.guard.gate

    asked = []
    monkeypatch.setattr(tbkit.guard.gate, "ensure", lambda *needs, **kw: asked.append(needs))
    report = tbkit.run(
        zoo.loaded(zoo.build(zoo.LeakyMaskDecoder)),
        checks=["causal", "attention", "attribution"],
        out_dir=tmp_path,
        progress=False,
    )
    failed = {r.check for r in report.rows if r.status is Status.FAIL}
    assert failed == {"causal", "attention", "attribution"}, report.rows
    assert str(report.verdict) == "FAIL"
    healthy = tbkit.run(zoo.loaded(zoo.build(zoo.HealthyDecoder)), tiers=(2,), out_dir=tmp_path / "h", progress=False)
    assert {r.check for r in healthy.rows} == set(CHECKS)
    assert not [r for r in healthy.rows if r.status in (Status.FAIL, Status.ERROR)], healthy.rows
    assert asked == [("captum>=0.9",), ("captum>=0.9",)]  # the runner asked the gate before attribution


# ------------------------------------------------------------------------------------------
# real third-party architectures (tiny configs, no downloads)
# ------------------------------------------------------------------------------------------
def _tiny_gpt2(impl):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(
        vocab_size=zoo.VOCAB,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation=impl,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg)


def test_gpt2_sdpa_weights_are_recomputed_exactly():
    """HF GPT-2 with SDPA (weights never materialised) vs the same weights in eager mode (softmax
    materialised): the recomputed per-head weights must equal the eager ones."""
    sdpa, eager = _tiny_gpt2("sdpa").eval(), _tiny_gpt2("eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    ids = torch.randint(0, zoo.VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))
    got = {}
    for name, model in (("sdpa", sdpa), ("eager", eager)):
        lm = zoo.loaded(model, kind="decoder")
        got[name] = capture(lambda: lm(ids), model, 2, {9}).maps
    assert [m.source for m in got["sdpa"]] == ["scaled_dot_product_attention"] * 2
    assert [m.source for m in got["eager"]] == ["softmax"] * 2
    for a, b in zip(got["sdpa"], got["eager"]):
        assert a.layer == b.layer
        torch.testing.assert_close(a.weights, b.weights, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2-sdpa", "gpt2-eager", "bert"])
def test_transformers_models_pass_tier2(arch):
    transformers = pytest.importorskip("transformers")
    if arch == "bert":
        torch.manual_seed(0)
        model = transformers.BertModel(
            transformers.BertConfig(
                vocab_size=zoo.VOCAB,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=32,
            )
        )
        lm = zoo.loaded(model, kind="encoder")
    else:
        lm = zoo.loaded(_tiny_gpt2(arch.split("-")[1]), kind="decoder")
    for check_id in CHECKS:
        if check_id == "attribution" and not have_captum():
            continue
        rows, _ = run_check(lm, check_id)
        assert not [r for r in rows if r.status in (Status.FAIL, Status.ERROR, Status.SKIP)], (check_id, rows)


@needs_captum
def test_cli_runs_tier2_on_the_bundled_example(tmp_path):
    """`tbkit run --tier 2 --json` on the bundled example: every Tier 2 check reports, plots land on
    disk. TBKIT_PIP_NO_INDEX=1: captum is already importable here, so the gate must need no download."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, TBKIT_PIP_NO_INDEX="1")
    proc = subprocess.run(
        [sys.executable, "-m", "tbkit", "run", "--tier", "2", "--out", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert {r["check"] for r in data["rows"]} == set(CHECKS)
    assert data["verdict"] == "PASS", [r for r in data["rows"] if r["status"] != "PASS"]
    plots = {p.name for p in (tmp_path / "plots").glob("*.png")}
    assert {"robustness_degradation.png", "capacity_effective_rank.png", "attention_heads_00_mhsa_0.png"} <= plots
