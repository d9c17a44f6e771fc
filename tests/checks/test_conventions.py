"""Conventions are measured, never guessed (issue 22): each check FAILs only on evidence under the
conventions the model demonstrably uses; what cannot be established is a WARN saying how to
declare it; each convention appears once, in the ``conventions`` rows. Every test runs a real
model written the way it is published."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import tbkit
from tbkit.errors import SourceError, UsageError

PUBLIC = Path(__file__).parents[1] / "fixtures" / "public"
FAST = {"speed_seconds_per_point": 0.02}
pytestmark = pytest.mark.slow


def run(source, checks=None, **options):
    fast = FAST if checks is None or "speed" in checks else {}  # an option of a check not in the run is an error
    return tbkit.run(
        source, checks=checks, out_dir=None, progress=False, stream=io.StringIO(), options={**fast, **options}
    )


def conventions(report) -> dict:
    rows = [r for r in report.rows if r.check == "conventions"]
    assert len({r.metric for r in rows}) == len(rows), "each convention appears once"
    return {r.metric: r for r in rows}


def failures(report) -> list:
    return [(r.check, r.metric, r.detail[:300]) for r in report.rows if r.status.value in ("FAIL", "ERROR")]


def test_roberta_position_offset_is_measured_and_the_checks_use_it(tmp_path):
    pytest.importorskip("transformers")
    config = dict(model_type="roberta", vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=2)
    (tmp_path / "config.json").write_text(
        json.dumps({**config, "intermediate_size": 128, "max_position_embeddings": 130})
    )
    report = run(str(tmp_path), checks="conventions,shape,stability,memory,padding")
    length = conventions(report)["maximum length"]
    assert (length.status.value, length.value) == ("PASS", 128)
    assert "130 rows, offset 2" in length.detail and "measured" in length.detail
    assert failures(report) == []
    shape = next(r for r in report.rows if r.metric == "shapes correct")
    assert "length 1, 2, 17, 128" in shape.detail


def test_seq_first_word_language_model_is_transposed_and_exactly_causal():
    report = run(str(PUBLIC / "word_language_model"), checks="conventions,shape,batch_equivalence,causal")
    layout = conventions(report)["layout"]
    assert layout.value == "seq_first" and "measured" in layout.detail and "transposed" in layout.detail
    assert failures(report) == []
    assert [r.status.value for r in report.rows if r.check == "causal"] == ["PASS"] * 3


def test_declared_layout_is_used_and_said():
    report = run(str(PUBLIC / "word_language_model"), checks="conventions,causal", layout="batch_first")
    layout = conventions(report)["layout"]
    assert layout.value == "batch_first" and "declared: run option layout" in layout.detail
    # fed (B, T) as declared, the model reads rows as positions: the user's declaration is what is judged
    assert any(r.status.value == "FAIL" for r in report.rows if r.check == "causal")
    with pytest.raises(UsageError, match="layout.*must be one of .batch_first., .seq_first."):
        run(str(PUBLIC / "word_language_model"), checks="causal", layout="sideways")


def test_boolean_mask_library_gets_its_convention_measured():
    report = run(str(PUBLIC / "bool_mask_library"), checks="conventions,padding")
    mask = conventions(report)["mask"]
    assert mask.value == "bool-keep" and "measured" in mask.detail
    assert "int-keep: raised RuntimeError: masked_fill_ only supports boolean masks" in mask.detail
    padding = [r for r in report.rows if r.check == "padding"]
    assert [r.status.value for r in padding] == ["PASS", "PASS"]
    assert "`mask=`, bool, True = keep, measured" in padding[0].detail


def test_a_mask_ignored_under_every_convention_still_fails():
    config = json.loads((PUBLIC / "bool_mask_library" / "config.json").read_text())
    lm = tbkit.load(str(PUBLIC / "bool_mask_library"), config={**config, "ignore_mask": True})
    report = run(lm, checks="conventions,padding")
    assert conventions(report)["mask"].status.value == "WARN"
    fails = [r for r in report.rows if r.check == "padding" and r.status.value == "FAIL"]
    assert len(fails) == 2 and all("No other mask convention keeps them either" in r.detail for r in fails)


def test_declared_mask_convention_is_used_and_said():
    report = run(str(PUBLIC / "bool_mask_library"), checks="conventions,padding", mask_convention="bool-keep")
    mask = conventions(report)["mask"]
    assert mask.value == "bool-keep" and "declared: run option mask_convention" in mask.detail
    assert failures(report) == []
    with pytest.raises(UsageError, match="mask_convention.*must be one of"):
        run(str(PUBLIC / "bool_mask_library"), checks="padding", mask_convention="ones")


def test_llama_reference_style_file_with_dataclass_args_and_required_start_pos():
    report = run(str(PUBLIC / "llama_dataclass"))
    assert failures(report) == []
    assert "start_pos=0" in conventions(report)["inputs"].detail


def test_model_needing_setup_is_built_by_build_model_and_the_advice_names_it():
    report = run(str(PUBLIC / "builder_function" / "model.py"), checks="conventions,shape,causal,gradient_flow")
    assert failures(report) == []
    with pytest.raises(SourceError) as err:
        tbkit.load(f"{PUBLIC / 'builder_function' / 'model.py'}:CachedDecoder")
    text = str(err.value)
    assert "build_model()" in text and "setup_caches" in text and "Fix the model's forward" not in text


def test_encoder_decoder_with_src_seq_trg_seq():
    lm = tbkit.load(str(PUBLIC / "src_trg_seq2seq" / "model.py"))
    assert lm.kind == "seq2seq"
    report = run(lm)
    assert failures(report) == []
    assert "trg_seq=" in conventions(report)["inputs"].detail


class _TwoInputSeq2Seq(nn.Module):
    """forward(src, out_tokens): a decoder input under a name nobody could guess."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.core = nn.Transformer(32, 2, 1, 1, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(32, 50)

    def forward(self, src, out_tokens):
        T = out_tokens.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(T)
        return self.head(self.core(self.emb(src), self.emb(out_tokens), tgt_mask=mask, tgt_is_causal=True))


def test_declared_seq2seq_takes_its_second_positional_as_the_decoder_input():
    torch.manual_seed(0)
    with pytest.raises(SourceError, match="--kind seq2seq"):
        tbkit.load(_TwoInputSeq2Seq())
    lm = tbkit.load(_TwoInputSeq2Seq(), kind="seq2seq")
    report = run(lm, checks="conventions,shape,causal")
    assert failures(report) == []
    assert "out_tokens=" in conventions(report)["inputs"].detail


class _SegmentBert(nn.Module):
    """BERT-pytorch style: forward(x, segment_info) with both required."""

    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Embedding(60, 32, padding_idx=0)
        self.segment = nn.Embedding(3, 32, padding_idx=0)
        self.position = nn.Embedding(40, 32)
        layer = nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x, segment_info):
        mask = x == 0
        h = self.token(x) + self.segment(segment_info) + self.position(torch.arange(x.shape[1]))
        return self.encoder(h, src_key_padding_mask=mask)


def test_required_segment_ids_are_synthesised():
    torch.manual_seed(0)
    report = run(tbkit.load(_SegmentBert(), kind="encoder"), checks="conventions,shape,stability")
    assert failures(report) == []
    assert "segment_info=zeros" in conventions(report)["inputs"].detail


class _StatesMoreThanItTakes(nn.Module):
    """Declares block_size 64 but its (not position-named) table holds 40 rows: the stated limit is wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.block_size = 64
        self.tok = nn.Embedding(50, 16)
        self.table = nn.Embedding(40, 16)
        self.head = nn.Linear(16, 50)

    def forward(self, input_ids):
        return self.head(self.tok(input_ids) + self.table(torch.arange(input_ids.shape[1])))


def test_a_length_that_cannot_be_established_is_a_warning_and_the_checks_use_the_measured_one():
    torch.manual_seed(0)
    report = run(tbkit.load(_StatesMoreThanItTakes(), kind="encoder"), checks="conventions,shape,stability,memory")
    length = conventions(report)["maximum length"]
    assert (length.status.value, length.value) == ("WARN", 40)
    assert "length 64 raises IndexError" in length.detail and "max_len=40" in length.detail
    assert failures(report) == []


def test_parameters_reached_only_by_an_optional_input_are_a_warning_naming_it(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.TrOCRConfig(
        vocab_size=128, d_model=32, decoder_layers=2, decoder_attention_heads=2, decoder_ffn_dim=64
    )
    report = run(tbkit.load(transformers.TrOCRForCausalLM(config)), checks="gradient_flow")
    assert failures(report) == []
    row = next(r for r in report.rows if r.metric == "parameters reached only by optional inputs")
    assert row.status.value == "WARN" and "encoder_hidden_states" in row.detail and "encoder_attn" in row.detail


def test_length_probe_never_hands_an_out_of_range_index_to_an_embedding():
    """On CUDA an out-of-range lookup is a device-side assert that breaks the process: the probe's
    embeddings check their indices first and raise an ordinary IndexError instead."""
    from tbkit.checks.measure import bounds_checked

    model = _StatesMoreThanItTakes()
    lookups = []
    model.table.register_forward_hook(lambda *a: lookups.append(1))
    with bounds_checked(model), pytest.raises(IndexError, match=r"index 40 out of range \(40 rows\)"):
        model(torch.zeros(1, 41, dtype=torch.long))
    assert lookups == []  # the table itself never ran
    assert model(torch.zeros(1, 40, dtype=torch.long)).shape == (1, 40, 50)  # hooks removed after


def test_layout_declared_in_config_json_is_used_and_said():
    config = json.loads((PUBLIC / "word_language_model" / "config.json").read_text())
    lm = tbkit.load(str(PUBLIC / "word_language_model"), config={**config, "layout": "seq_first"})
    layout = conventions(run(lm, checks="conventions"))["layout"]
    assert layout.value == "seq_first" and "declared: config.json key 'layout'" in layout.detail
