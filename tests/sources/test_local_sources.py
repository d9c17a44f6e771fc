"""Local sources: the bundled example, folders, .py files, module objects; building, config
formats, and the facts taken from the real modules (vocab, max length, kind)."""

from __future__ import annotations

import io
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import tbkit
from tbkit.errors import SourceError
from tbkit.sources import content_sha256

EXPORTS = Path(__file__).parents[1] / "fixtures" / "exports"
EXAMPLE = Path(tbkit.__file__).parent / "examples" / "tiny_gpt"


def write(folder: Path, files: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


# ---- the bundled example -------------------------------------------------------------------
def test_default_source_is_the_tiny_gpt_example():
    m = tbkit.load(None)
    assert (m.provenance.source, m.provenance.location) == ("example", "tiny_gpt")
    assert (m.kind, m.vocab_size, m.max_len) == ("decoder", 512, 64)
    files = {n: (EXAMPLE / n).read_bytes() for n in ("model.py", "config.json")}
    assert m.provenance.content_sha256 == content_sha256(files)
    assert type(m.module).__name__ == "CustomTransformer"
    assert {n for n, _ in m.module.named_children()} >= {"embedding_0_token", "mhsa_0", "layernorm_0", "ffn_0"}
    assert isinstance(m.module.mhsa_0, nn.MultiheadAttention) and m.module.mhsa_0.batch_first
    assert tbkit.load("tiny_gpt").provenance.content_sha256 == m.provenance.content_sha256


def test_tiny_gpt_passes_tier1():
    checks = ["shape", "batch_equivalence", "causal", "padding", "stability", "determinism", "init", "gradient_flow"]
    report = tbkit.run("tiny_gpt", checks=checks, out_dir=None, progress=False, stream=io.StringIO())
    rows = report.rows
    assert {r.check for r in rows} == set(checks)
    bad = [(r.check, r.metric, str(r.status), r.detail[:200]) for r in rows if str(r.status) != "PASS"]
    assert not bad, bad


def test_tiny_gpt_never_gives_nan_on_fully_masked_rows():
    m = tbkit.load("tiny_gpt")
    ids = torch.randint(0, 512, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, :5] = 0  # left padding: the first queries would see no key at all
    mask[2] = 0  # a row that is all padding
    for ctx in (torch.enable_grad, torch.no_grad, torch.inference_mode):
        with ctx():
            assert torch.isfinite(m(ids, attention_mask=mask)).all()


@pytest.mark.slow
def test_wheel_ships_the_example(tbkit_wheel):
    names = zipfile.ZipFile(tbkit_wheel).namelist()
    assert "tbkit/examples/tiny_gpt/model.py" in names
    assert "tbkit/examples/tiny_gpt/config.json" in names
    assert "tbkit/sources/gist.py" in names


# ---- folders, files, fixtures --------------------------------------------------------------
def test_rotary_gpt_folder_kind_inferred_from_causal_code():
    m = tbkit.load(EXPORTS / "gpt_rotary")
    assert m.provenance.source == "folder" and m.provenance.location == str((EXPORTS / "gpt_rotary").resolve())
    assert m.kind == "decoder" and m.kind_reason.startswith("inferred: causal masking")
    assert (m.vocab_size, m.max_len) == (200, 128)  # no position table: the declared limit
    assert any("dropout" in n and "not passed" in n for n in m.notes)
    assert m(torch.randint(0, 200, (2, 9))).shape == (2, 9, 200)


def test_py_file_picks_up_config_beside_it():
    m = tbkit.load(str(EXPORTS / "gpt_rotary" / "model.py"))
    assert m.provenance.source == "file"
    assert [f.name for f in m.provenance.files] == ["config.json", "model.py"]
    assert m.vocab_size == 200


def test_py_file_without_config(tmp_path):
    shutil.copy(EXAMPLE / "model.py", tmp_path / "my_model.py")
    m = tbkit.load(tmp_path / "my_model.py")
    assert m.config == {} and m.vocab_size == 512 and m.max_len == 64
    assert m.kind == "decoder" and m.kind_reason.startswith("inferred")


def test_nodes_config_encoder():
    m = tbkit.load(EXPORTS / "encoder_nodes")
    assert m.kind == "encoder" and m.kind_reason.startswith("inferred: no causal masking")
    assert (m.vocab_size, m.max_len) == (300, 96)
    assert type(m.module).__name__ == "Model"
    assert m(torch.randint(0, 300, (2, 5))).shape == (2, 5, 48)


def test_seq2seq_inferred_from_forward():
    m = tbkit.load(EXPORTS / "seq2seq")
    assert m.kind == "seq2seq" and "decoder_input_ids" in m.kind_reason
    assert (m.vocab_size, m.max_len) == (120, 64)
    out = m(torch.randint(0, 120, (2, 6)), decoder_input_ids=torch.randint(0, 120, (2, 4)))
    assert out.shape == (2, 4, 120)


def test_kind_argument_and_config_kind(tmp_path):
    assert tbkit.load(EXPORTS / "gpt_rotary", kind="encoder").kind_reason == "declared"
    m = tbkit.load(EXPORTS / "gpt_rotary", config={"kind": "encoder"})
    assert (m.kind, m.kind_reason) == ("encoder", "from config 'kind'")


def test_lm_head_without_causal_code_is_inferred_decoder(tmp_path):
    code = (
        "import torch.nn as nn\n\nclass CustomTransformer(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.embedding_0_token = nn.Embedding(40, 8)\n        self.linear_0 = nn.Linear(8, 40)\n"
        "    def forward(self, input_ids, attention_mask=None):\n"
        "        return {'logits': self.linear_0(self.embedding_0_token(input_ids))}\n"
    )
    m = tbkit.load(write(tmp_path / "lm", {"model.py": code, "config.json": "{}"}))
    assert m.kind == "decoder" and "language-model head" in m.kind_reason and "kind='encoder'" in m.kind_reason
    assert m(torch.zeros(1, 3, dtype=torch.long)).shape == (1, 3, 40)  # dict output unwrapped
    assert m.max_len is None


def test_config_vocab_disagreeing_with_embedding_is_noted_not_trusted(tmp_path):
    folder = write(
        tmp_path / "exp",
        {"model.py": (EXAMPLE / "model.py").read_text(), "config.json": '{"vocab_size": 50257, "d_model": 768}'},
    )
    m = tbkit.load(folder)
    assert m.vocab_size == 512
    assert any("50257" in n and "512" in n and "embedding" in n for n in m.notes)


def test_config_argument_overrides_the_file():
    m = tbkit.load(EXPORTS / "gpt_rotary", config={"vocab_size": 64, "num_layers": 1})
    assert m.vocab_size == 64 and len(m.module.blocks) == 1


def test_build_model_function_and_model_name(tmp_path):
    helpers = (
        "import torch.nn as nn\n\nclass Embed(nn.Module):\n    def __init__(self, v, d):\n"
        "        super().__init__()\n        self.tok = nn.Embedding(v, d)\n"
        "    def forward(self, x):\n        return self.tok(x)\n\n"
        "class Net(nn.Module):\n    def __init__(self, vocab_size=30, d_model=8):\n        super().__init__()\n"
        "        self.embed = Embed(vocab_size, d_model)\n        self.head = nn.Linear(d_model, vocab_size)\n"
        "    def forward(self, input_ids, attention_mask=None):\n        return self.head(self.embed(input_ids))\n"
    )
    built = helpers + "\ndef build_model(vocab_size, d_model):\n    return Net(vocab_size, d_model)\n"
    m = tbkit.load(write(tmp_path / "a", {"model.py": built, "config.json": '{"vocab_size": 33, "d_model": 4}'}))
    assert m.vocab_size == 33 and any("build_model" in n for n in m.notes)
    m2 = tbkit.load(
        write(tmp_path / "b", {"model.py": helpers, "config.json": '{"model_name": "Net", "vocab_size": 21}'})
    )
    assert m2.vocab_size == 21 and type(m2.module).__name__ == "Net"


# ---- module objects ------------------------------------------------------------------------
class LocalLM(nn.Module):
    def __init__(self, vocab_size=25, d_model=8):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, d_model)
        self.out = nn.Linear(d_model, vocab_size)

    def forward(self, input_ids, attention_mask=None):
        return self.out(self.emb(input_ids))


def test_module_instance_and_class():
    inst = LocalLM()
    m = tbkit.load(inst)
    assert m.module is inst and m.provenance.source == "module"
    assert m.provenance.location.endswith(":LocalLM") and m.vocab_size == 25
    assert m.module.training  # the load-time forward restored the mode it found
    m2 = tbkit.load(LocalLM, config={"vocab_size": 11, "unused": 1})
    assert m2.vocab_size == 11 and any("unused" in n for n in m2.notes)
    with pytest.raises(SourceError, match="expected_sha256 can only be checked"):
        tbkit.load(inst, expected_sha256="0" * 64)


# ---- isolation ------------------------------------------------------------------------------
def test_model_code_runs_in_its_own_namespace_and_pickles(tmp_path):
    code = (EXAMPLE / "model.py").read_text() + "\nSENTINEL_FROM_MODEL_PY = 1\n"
    m = tbkit.load(write(tmp_path / "exp", {"model.py": code, "config.json": "{}"}))
    assert "SENTINEL_FROM_MODEL_PY" not in globals()
    modname = type(m.module).__module__
    assert modname.startswith("tbkit_user_model_") and sys.modules[modname].SENTINEL_FROM_MODEL_PY == 1
    clone = pickle.loads(pickle.dumps(m.module))  # classes defined in model.py are importable by name
    ids = torch.randint(0, 512, (1, 5))
    with torch.no_grad():
        assert torch.equal(clone.eval()(ids), m.module.eval()(ids))


def test_load_leaves_caller_rng_alone_and_builds_reproducibly():
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a = tbkit.load("tiny_gpt")
    assert torch.equal(torch.get_rng_state(), state)
    b = tbkit.load("tiny_gpt")
    assert all(torch.equal(p, q) for p, q in zip(a.module.parameters(), b.module.parameters()))


def test_importing_sources_stays_light():
    code = "import sys, tbkit, tbkit.sources, tbkit.sources.gist; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_hugging_face_models_kind_from_the_model_not_library_source():
    # Library source mentions causal masks for options a model may not use (BERT's source has
    # 'causal_mask'), so it is not evidence; a transformers model says whether it generates.
    transformers = pytest.importorskip("transformers")
    bert = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=99,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=64,
        )
    )
    m = tbkit.load(bert)
    assert (m.kind, m.vocab_size, m.max_len) == ("encoder", 99, 64)
    assert m(torch.zeros(2, 3, dtype=torch.long)).shape == (2, 3, 32)  # last_hidden_state unwrapped
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=99, n_embd=32, n_layer=1, n_head=2, n_positions=64)
    )
    g = tbkit.load(gpt2)
    assert (g.kind, g.vocab_size, g.max_len) == ("decoder", 99, 64) and "can generate" in g.kind_reason


def test_notebook_display_shows_provenance_and_notes():
    pretty = pytest.importorskip("IPython.lib.pretty")
    m = tbkit.load("tiny_gpt")
    text = pretty.pretty(m)
    assert m.provenance.content_sha256 in text and "decoder" in text
    assert all(f"note: {n}" in text for n in m.notes)
