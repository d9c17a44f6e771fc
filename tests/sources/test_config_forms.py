"""One way to pass a config for every source form (issue 22, item 6): config.json beside the model
file, in the package folder of ``pkg.module:Class``, in a ``--path`` folder, or ``--config FILE`` /
``config=`` (a path or a dict); the precedence between them; the file read recorded in the
provenance; and no message that names a config file tbkit did not read."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import tbkit
from gist_server import FakeGitHub
from tbkit.errors import SourceError

ROOT = Path(__file__).resolve().parents[2]
GIST_ID = "ab12cd34ef56ab12cd34"

# The vocabulary size says which config was read: every config below gives a different one.
NET = """
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, vocab_size, d_model=8):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, input_ids, attention_mask=None):
        return self.head(self.tok(input_ids))
"""

# A packaged model: pkg/sub/model.py imports its layers relatively, as published packages do.
REL_MODEL = """
import torch.nn as nn

from .layers import make_head


class Net(nn.Module):
    def __init__(self, vocab_size, d_model=8):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.head = make_head(d_model, vocab_size)

    def forward(self, input_ids, attention_mask=None):
        return self.head(self.tok(input_ids))
"""
LAYERS = "import torch.nn as nn\n\n\ndef make_head(d, v):\n    return nn.Linear(d, v)\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def cfg(path: Path, vocab: int) -> Path:
    return write(path, json.dumps({"vocab_size": vocab}))


def package(root: Path) -> Path:
    """root/pkg/sub/model.py (relative import of root/pkg/sub/layers.py); returns root."""
    for folder in (root / "pkg", root / "pkg" / "sub"):
        write(folder / "__init__.py", "")
    write(root / "pkg" / "sub" / "layers.py", LAYERS)
    write(root / "pkg" / "sub" / "model.py", REL_MODEL)
    return root


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tbkit_cmd(*args, cwd):
    env = {"PYTHONPATH": f"{ROOT / 'python'}", "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run(
        [sys.executable, "-m", "tbkit", *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


# ---- where a config is found, per form -----------------------------------------------------
def test_file_form_reads_config_beside_it_and_records_it(tmp_path):
    model = write(tmp_path / "m" / "net.py", NET)
    beside = cfg(tmp_path / "m" / "config.json", 21)
    m = tbkit.load(f"{model}:Net")
    assert m.vocab_size == 21
    assert (m.provenance.config_file, m.provenance.config_sha256) == (str(beside), sha(beside))
    assert m.provenance.to_dict()["config_sha256"] == sha(beside)
    assert f"config from {beside}, sha256 {sha(beside)}" in str(m.provenance)


def test_module_form_reads_config_in_the_path_folder(tmp_path):
    root = package(tmp_path / "src")
    in_path = cfg(root / "config.json", 23)
    m = tbkit.load("pkg.sub.model:Net", path=root)
    assert m.vocab_size == 23 and m.provenance.config_file == str(in_path)


def test_module_form_precedence_beside_then_package_folder_then_path(tmp_path):
    root = package(tmp_path / "src")
    cfg(root / "config.json", 23)
    in_package = cfg(root / "pkg" / "config.json", 25)
    m = tbkit.load("pkg.sub.model:Net", path=root)
    assert m.vocab_size == 25 and m.provenance.config_file == str(in_package)
    beside = cfg(root / "pkg" / "sub" / "config.json", 27)
    m = tbkit.load("pkg.sub.model:Net", path=root)
    assert m.vocab_size == 27 and m.provenance.config_file == str(beside)


def test_explicit_config_wins_for_every_form_and_a_dict_overrides_keys(tmp_path):
    explicit = cfg(tmp_path / "elsewhere" / "my.json", 31)
    folder = tmp_path / "folder"
    write(folder / "model.py", NET)
    cfg(folder / "config.json", 21)
    root = package(tmp_path / "src")
    cfg(root / "pkg" / "sub" / "config.json", 27)
    for source, extra in ((folder, {}), (f"{folder / 'model.py'}:Net", {}), ("pkg.sub.model:Net", {"path": root})):
        m = tbkit.load(source, config=str(explicit), **extra)
        assert m.vocab_size == 31, source
        assert (m.provenance.config_file, m.provenance.config_sha256) == (str(explicit), sha(explicit))
    assert tbkit.load(folder, config={"vocab_size": 33}).vocab_size == 33  # a dict overrides keys of the file
    m = tbkit.load(folder, config=explicit)  # a PathLike is a path too
    assert m.vocab_size == 31


def test_explicit_config_for_a_gist_and_for_a_model_class(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    explicit = cfg(tmp_path / "my.json", 35)
    with FakeGitHub() as server:
        server.add_gist(GIST_ID, {"model.py": NET, "config.json": json.dumps({"vocab_size": 21})})
        kw = dict(api_url=server.url, cache_dir=tmp_path / "cache", retries=1, backoff=0.01, timeout=5)
        assert tbkit.load(GIST_ID, **kw).provenance.config_file == f"config.json of gist {GIST_ID}"
        m = tbkit.load(GIST_ID, config=str(explicit), **kw)
    assert m.vocab_size == 35 and m.provenance.config_file == str(explicit)
    import torch.nn as nn

    class Local(nn.Module):
        def __init__(self, vocab_size):
            super().__init__()
            self.tok = nn.Embedding(vocab_size, 4)

        def forward(self, input_ids, attention_mask=None):
            return self.tok(input_ids)

    m = tbkit.load(Local, config=str(explicit))
    assert m.vocab_size == 35 and m.provenance.config_sha256 == sha(explicit)


# ---- messages name the file read, or where tbkit looked --------------------------------------
def test_missing_key_without_any_config_says_where_tbkit_looked(tmp_path):
    root = package(tmp_path / "src")
    with pytest.raises(SourceError) as info:
        tbkit.load("pkg.sub.model:Net", path=root)
    msg = str(info.value)
    assert "requires vocab_size, and no config file was read" in msg
    for folder in (root / "pkg" / "sub", root / "pkg", root):
        assert str(folder) in msg
    assert "Add vocab_size to config.json" not in msg
    assert f"Put a config.json with vocab_size in {root / 'pkg' / 'sub'}" in msg and "--config FILE" in msg


def test_missing_key_in_the_config_read_names_that_file(tmp_path):
    write(tmp_path / "f" / "model.py", NET)
    read = write(tmp_path / "f" / "config.json", '{"d_model": 4}')
    with pytest.raises(SourceError) as info:
        tbkit.load(tmp_path / "f")
    assert f"which the config read from {read} does not provide" in str(info.value)
    assert f"Add vocab_size to {read} (the config tbkit read)" in str(info.value)


def test_relative_import_by_file_path_gives_a_way_out_not_a_circle(tmp_path):
    root = package(tmp_path / "src")
    model = root / "pkg" / "sub" / "model.py"
    with pytest.raises(SourceError) as info:
        tbkit.load(f"{model}:Net")
    msg = str(info.value)
    assert f"tbkit run pkg.sub.model:ClassName --path {root}" in msg
    place = root / "pkg" / "sub" / "config.json"
    assert f"give its config with --config FILE or place it at {place}" in msg
    cfg(place, 29)  # following the advice literally loads the model
    m = tbkit.load("pkg.sub.model:Net", path=root)
    assert m.vocab_size == 29 and m.provenance.config_file == str(place)
    explicit = cfg(tmp_path / "my.json", 31)
    with pytest.raises(SourceError) as info:
        tbkit.load(f"{model}:Net", config=str(explicit))
    assert f"--path {root} --config {explicit}" in str(info.value)


def test_bad_config_arguments(tmp_path):
    with pytest.raises(SourceError, match="config must be a path to a JSON file or a dict, not int"):
        tbkit.load("tiny_gpt", config=3)
    with pytest.raises(SourceError, match="given with --config .* is missing"):
        tbkit.load("tiny_gpt", config=str(tmp_path / "nope.json"))
    hf = write(tmp_path / "hf" / "config.json", '{"model_type": "gpt2"}')
    with pytest.raises(SourceError, match="is itself a Hugging Face config"):
        tbkit.load(hf, config=str(cfg(tmp_path / "x.json", 3)))


# ---- the CLI -------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_run_module_form_with_config_file(tmp_path):
    root = package(tmp_path / "src")
    explicit = cfg(tmp_path / "cfg" / "model.json", 37)
    proc = tbkit_cmd(
        "run", "pkg.sub.model:Net", "--path", str(root), "--config", str(explicit), "--checks", "summary",
        "--no-progress", "--json", "--out", str(tmp_path / "rep"), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["model"]["provenance"]["config_file"] == str(explicit)
    assert report["model"]["provenance"]["config_sha256"] == sha(explicit)
    assert f"config from {explicit}" in proc.stderr and "vocab 37" in proc.stderr


@pytest.mark.slow
def test_cli_config_that_is_missing_is_a_usage_error_for_run_and_search(tmp_path):
    root = package(tmp_path / "src")
    proc = tbkit_cmd("search", "pkg.sub.model:Net", "--path", str(root), "--synthetic", cwd=tmp_path)
    assert proc.returncode == 2 and "no config file was read" in proc.stderr, proc.stderr  # --path reached load
    for command in (["run"], ["search", "--synthetic"]):
        proc = tbkit_cmd(*command, "tiny_gpt", "--config", "nope.json", cwd=tmp_path)
        assert proc.returncode == 2, (command, proc.stderr)
        assert "the config file" in proc.stderr and "nope.json" in proc.stderr and "Traceback" not in proc.stderr


def test_tbkit_run_takes_config_too(tmp_path):
    import io

    folder = tmp_path / "folder"
    write(folder / "model.py", NET)
    explicit = cfg(tmp_path / "my.json", 39)
    stream = io.StringIO()
    report = tbkit.run(
        folder, checks="summary", config=str(explicit), out_dir=tmp_path / "rep", progress=False, stream=stream
    )
    data = json.loads(report.to_json())
    assert data["model"]["provenance"]["config_file"] == str(explicit) and data["model"]["vocab_size"] == 39
    assert f"config from {explicit}" in stream.getvalue()
