"""tbkit.data: tokenizer, token blocks, the pad-aware loss, synthetic data. Plain torch, fast."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tbkit.errors import UsageError
from tbkit.training import data as tdata


def test_char_tokenizer_round_trips_and_says_what_it_did(tmp_path):
    text = "hello world\nhello there\n" * 20
    f = tmp_path / "corpus.txt"
    f.write_text(text)
    td = tdata.prepare(str(f), vocab_size=97, block_len=16)
    tok = td.tokenizer
    assert tok.level == "char" and tok.unk_id is None
    assert tok.decode(tok.encode(text)) == text
    assert len(set(text)) == len(tok.symbols)
    assert "char-level tokenizer" in td.notes[0] and f"{len(set(text))} distinct characters" in td.notes[0]
    assert td.input_ids.shape[1] == 16 and int(td.input_ids.max()) < 97
    assert not td.synthetic


def test_vocab_capped_to_the_model_with_unk_reported():
    text = " ".join(f"w{i % 50}" for i in range(400)) + " rare1 rare2 rare3"
    tok = tdata.build_tokenizer(text, vocab_size=20, level="word")
    assert len(tok.symbols) == 20 and tok.unk_id == 19
    ids = tok.encode(text)
    assert max(ids) == 19 and ids.count(19) > 0
    assert "share <unk> = id 19" in tok.note and "more than the model's vocabulary of 20" in tok.note


def test_stream_tail_is_right_padded_and_masked():
    stream = torch.arange(1, 38) % 11  # 37 tokens -> 2 full blocks of 16 + a tail of 5
    td = tdata.prepare(stream, vocab_size=11, block_len=16, pad_id=0)
    assert td.input_ids.shape == (3, 16)
    assert td.attention_mask[:2].all() and int(td.attention_mask[2].sum()) == 5
    assert (td.input_ids[2, 5:] == 0).all()


def test_rows_longer_than_block_are_cut_and_dict_mask_is_honoured():
    ids = np.arange(2 * 40).reshape(2, 40) % 50
    mask = np.ones_like(ids)
    mask[1, 30:] = 0
    td = tdata.prepare({"input_ids": ids, "attention_mask": mask}, vocab_size=50, block_len=16)
    # 2 rows x 3 pieces (16, 16, 8 padded to 16); row 1's last piece has no real token -> dropped
    assert td.input_ids.shape == (5, 16)
    assert int(td.attention_mask.sum()) == 40 + 30


def test_loss_ignores_padding_but_not_token_zero():
    torch.manual_seed(0)
    V = 7
    ids = torch.tensor([[0, 3, 0, 5, 0, 0, 0, 0]])  # real tokens 0 3 0 5, then 4 pads (id 0)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0]])
    logits = torch.randn(1, 8, V)
    loss = tdata.lm_loss(logits, ids, mask)
    # by hand: positions 0..2 predict 3, 0, 5 (token 0 counts as a real target)
    expected = F.cross_entropy(logits[0, :3], torch.tensor([3, 0, 5]))
    assert torch.allclose(loss, expected)
    # changing what the model says at padded positions changes nothing
    logits2 = logits.clone()
    logits2[0, 4:] = 100.0
    assert torch.allclose(tdata.lm_loss(logits2, ids, mask), expected)
    # and the old bug (ignore_index=0) would give a different number
    wrong = F.cross_entropy(logits[0, :-1], ids[0, 1:], ignore_index=0)
    assert not torch.allclose(wrong, expected)


def test_bad_ids_and_missing_data_are_one_paragraph_usage_errors(tmp_path):
    with pytest.raises(UsageError) as e:
        tdata.prepare(torch.tensor([[1, 2, 300]]), vocab_size=97, block_len=8)
    msg = str(e.value)
    assert "outside [0, 97)" in msg and "\n" not in msg and "max 300" in msg
    with pytest.raises(UsageError, match="no training data given.*synthetic=True"):
        tdata.prepare(None, vocab_size=97, block_len=8)
    with pytest.raises(UsageError, match="does not exist"):
        tdata.prepare(str(tmp_path / "nope.txt"), vocab_size=97, block_len=8)
    with pytest.raises(UsageError, match="not an integer type"):
        tdata.prepare(torch.rand(3, 8), vocab_size=97, block_len=8)
    with pytest.raises(UsageError, match="both data and synthetic"):
        tdata.prepare(torch.ones(3, 8, dtype=torch.long), vocab_size=97, block_len=8, synthetic=True)


def test_synthetic_only_when_asked_and_labelled():
    td = tdata.prepare(None, vocab_size=97, block_len=16, synthetic=True, synthetic_blocks=8)
    assert td.synthetic and td.notes[0].startswith("SYNTHETIC")
    assert td.input_ids.shape == (8, 16) and int(td.input_ids.max()) < 64
    again = tdata.prepare(None, vocab_size=97, block_len=16, synthetic=True, synthetic_blocks=8)
    assert torch.equal(td.input_ids, again.input_ids)  # seeded


def test_split_and_unigram():
    td = tdata.prepare(None, vocab_size=97, block_len=16, synthetic=True, synthetic_blocks=20)
    train, val = tdata.split(td, 0.1, seed=0)
    assert len(train) == 18 and len(val) == 2
    uni = tdata.unigram_cross_entropy(train, val, 97)
    # the chain uses 64 ids: its unigram cross entropy lies well below uniform over 97
    assert 0 < uni < tdata.uniform_cross_entropy(97) and tdata.uniform_cross_entropy(97) == pytest.approx(math.log(97))
    with pytest.raises(UsageError):
        tdata.split(td.subset(slice(0, 1)), 0.1)


def test_tier3_modules_import_no_heavy_library():
    import subprocess
    import sys

    code = (
        "import sys, tbkit.training.data, tbkit.training.api, tbkit.training.search, tbkit.checks.tier3, tbkit.cli.search; "
        "print(sorted(m for m in ('torch', 'lightning', 'optuna', 'pandas', 'matplotlib', 'numpy') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
