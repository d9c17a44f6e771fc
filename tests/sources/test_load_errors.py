"""The bad-input corpus: every way a source can be wrong gives ONE paragraph naming the cause and
the fix, never shows the token, and writes nothing outside the cache directory.

Each case sets up its inputs (files, a scripted fake GitHub API on 127.0.0.1) and returns the
arguments for ``tbkit.load``; the test snapshots a temporary HOME / working dir / inputs before and
after the failing load.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import tbkit
from gist_server import FakeGitHub
from tbkit.errors import TbkitError

# platform-independent: also run against each built wheel by the release workflow (-m quick)
pytestmark = pytest.mark.quick

EXPORTS = Path(__file__).parents[1] / "fixtures" / "exports"
SECRET = "ghp_CORPUSSECRET0123456789abcdef"
PASSWORD = "hunter2-CORPUS-PASSWORD"  # given in URLs; must never be echoed
MAX_MESSAGE = 2000
GID = "c0ffee00c0ffee00c0ff"
OTHER_SHA = "f" * 40
GOOD_MODEL = (EXPORTS / "gpt_rotary" / "model.py").read_text()
GOOD_CONFIG = (EXPORTS / "gpt_rotary" / "config.json").read_text()
TINY = '{"vocab_size": 50, "d_model": 16, "nhead": 2, "num_layers": 1}'


@dataclass
class Env:
    server: FakeGitHub
    inputs: Path
    cache: Path

    def folder(self, name: str, files: dict) -> Path:
        d = self.inputs / name
        d.mkdir(parents=True)
        for fname, content in files.items():
            (d / fname).write_bytes(content if isinstance(content, bytes) else content.encode())
        return d

    def kw(self, **extra) -> dict:
        return {**dict(api_url=self.server.url, cache_dir=self.cache, retries=2, backoff=0.01, timeout=5), **extra}

    def gist(self, files: dict, **extra) -> tuple:
        self.server.add_gist(GID, files)
        return GID, self.kw(**extra)


CASES: dict = {}


def case(case_id: str, *fragments: str, token: bool = True):
    """Register a case: its setup returns (source, kwargs); `fragments` must all be in the message."""

    def deco(fn):
        assert case_id not in CASES
        CASES[case_id] = (fn, fragments, token)
        return fn

    return deco


# ---- malformed references ------------------------------------------------------------------
@case("malformed_id_not_hex", "not an existing path", "gist id", "Pass the gist id")
def _(env):
    return "zz-not-a-gist!", {}


@case("malformed_id_too_short", "not an existing path", "20 to 32 hexadecimal")
def _(env):
    return "abc123", {}


@case("overlong_source_string", "is not an existing path", "characters omitted")
def _(env):
    return "a" * 5000, {}  # too long for a path; the message quotes only its start


@case("malformed_url_foreign_host", "not a gist URL", "example.com")
def _(env):
    return f"https://example.com/alice/{GID}", {}


@case("malformed_url_no_id", "could not find a gist id", "address bar")
def _(env):
    return "https://gist.github.com/alice", {}


@case("malformed_revision", "is not a gist revision", "40-character")
def _(env):
    return f"{GID}@v1.0", {}


@case("conflicting_revisions", "revision", "Give the revision once")
def _(env):
    return f"{GID}@{'a' * 40}", {"revision": OTHER_SHA}


@case("wrong_source_type", "not a model source", "gist id or URL")
def _(env):
    return 42, {}


@case("missing_path", "no such file or folder", "Check the path")
def _(env):
    return "./nope/model.py", {}


@case("revision_for_folder", "applies to gists only")
def _(env):
    return str(EXPORTS / "gpt_rotary"), {"revision": OTHER_SHA}


# ---- the API misbehaving -------------------------------------------------------------------
@case("http_404", "not found, or it is private", "GITHUB_TOKEN")
def _(env):
    return GID, env.kw()


@case("http_401_bad_token", "rejected the credentials", "GITHUB_TOKEN")
def _(env):
    env.server.add_gist(GID, {"model.py": GOOD_MODEL, "config.json": GOOD_CONFIG})
    env.server.queue(f"/gists/{GID}", 401, {}, {"message": "Bad credentials"})
    return GID, env.kw()


@case("rate_limited_403", "rate limit", "HTTP 403", "resets at", "Set GITHUB_TOKEN to lift the limit", token=False)
def _(env):
    env.server.queue(
        f"/gists/{GID}", 403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(time.time()) + 900)}
    )
    return GID, env.kw()


@case(
    "rate_limited_429_long_retry_after", "rate limit", "HTTP 429", "in about 60 minute", "Set GITHUB_TOKEN", token=False
)
def _(env):
    env.server.queue(f"/gists/{GID}", 429, {"retry-after": "3600"})
    return GID, env.kw()


@case("rate_limited_with_token", "rate limit", "token's own limit")
def _(env):
    env.server.queue(
        f"/gists/{GID}", 403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(time.time()) + 60)}
    )
    return GID, env.kw()


@case("http_500_every_time", "after 3 attempt(s)", "HTTP 500", "network")
def _(env):
    for _ in range(3):
        env.server.queue(f"/gists/{GID}", 500)
    return GID, env.kw()


@case("timeout", "timed out after 0.3 s", "no cached copy")
def _(env):
    env.server.add_gist(GID, {"model.py": GOOD_MODEL, "config.json": GOOD_CONFIG})
    for _ in range(2):
        env.server.queue(f"/gists/{GID}", delay=1.5)
    return GID, env.kw(timeout=0.3, retries=1)


@case("network_down_no_cache", "connection failed", "no cached copy")
def _(env):
    return GID, dict(api_url="http://127.0.0.1:9", cache_dir=env.cache, retries=1, backoff=0.01)


@case("offline_without_cache", "offline mode is on", "not in the cache")
def _(env):
    return GID, dict(cache_dir=env.cache, offline=True)


@case("not_a_gist_response", "not a gist", "api_url")
def _(env):
    env.server.queue(f"/gists/{GID}", 200, {}, "<html>captive portal</html>")
    return GID, env.kw()


@case("truncated_file_raw_url_missing", "raw content of model.py", "not found")
def _(env):
    env.server.truncate_at = 100
    sha = env.server.add_gist(GID, {"model.py": GOOD_MODEL, "config.json": GOOD_CONFIG})
    env.server.queue(f"/raw/{GID}/{sha}/model.py", 404)
    return GID, env.kw()


@case("oversized_file", "over the per-file limit of 1000 bytes", "max_file_bytes")
def _(env):
    return env.gist({"model.py": GOOD_MODEL, "config.json": GOOD_CONFIG}, max_file_bytes=1000)


@case("oversized_truncated_raw", "larger than the limit", "max_file_bytes")
def _(env):
    env.server.truncate_at = 10
    sha = env.server.add_gist(GID, {"model.py": "x = 1\n" * 5, "config.json": "{}"})
    env.server.queue(f"/raw/{GID}/{sha}/model.py", 200, {}, "#" * 5000)  # raw file bigger than its listing
    return GID, env.kw(max_file_bytes=1000)


@case("traversal_name_dotdot", "not a plain file name", "'../evil.py'")
def _(env):
    return env.gist({"model.py": GOOD_MODEL, "config.json": GOOD_CONFIG, "../evil.py": "x = 1"})


@case("traversal_name_absolute", "not a plain file name", "/tmp/evil.py")
def _(env):
    return env.gist({"model.py": GOOD_MODEL, "config.json": GOOD_CONFIG, "/tmp/evil.py": "x = 1"})


@case("traversal_name_separator", "not a plain file name", "sub/model.py")
def _(env):
    return env.gist({"sub/model.py": GOOD_MODEL, "config.json": GOOD_CONFIG})


@case("odd_name_hidden_file", "not a plain file name", ".bashrc")
def _(env):
    return env.gist({"model.py": GOOD_MODEL, "config.json": GOOD_CONFIG, ".bashrc": "echo hi"})


@case("empty_gist", "has no files", "Check the gist id", "model.py")
def _(env):
    return env.gist({})


@case("gist_missing_model_py", "has no model.py", "train.py", "Export the model")
def _(env):
    return env.gist({"train.py": GOOD_MODEL, "config.json": GOOD_CONFIG})


@case(
    "gist_missing_config", "requires vocab_size", "no config file was read", "Put a config.json with vocab_size in gist"
)
def _(env):
    return env.gist({"model.py": GOOD_MODEL})


@case("hash_mismatch_code_not_run", "not the expected", "so it was not run", "expected_sha256")
def _(env):
    marker = env.inputs / "ran.txt"
    code = f"open({str(marker)!r}, 'w').write('executed')\n" + GOOD_MODEL
    return env.gist({"model.py": code, "config.json": GOOD_CONFIG}, expected_sha256="0" * 64)


@case("non_utf8_source_from_gist", "not UTF-8", "byte 0xe9", "Re-save")
def _(env):
    return env.gist({"model.py": b"# caf\xe9\n" + GOOD_MODEL.encode(), "config.json": GOOD_CONFIG})


# ---- broken exports (folders) --------------------------------------------------------------
@case("folder_missing_model_py", "has no model.py", "network.py")
def _(env):
    return str(env.folder("exp", {"network.py": GOOD_MODEL, "config.json": GOOD_CONFIG})), {}


@case("folder_missing_config", "requires vocab_size", "no config file was read", "Put a config.json with vocab_size in")
def _(env):
    return str(env.folder("exp", {"model.py": GOOD_MODEL})), {}


@case("invalid_config_json", "not valid JSON", "line 1", "Fix the JSON")
def _(env):
    return str(env.folder("exp", {"model.py": GOOD_MODEL, "config.json": '{"vocab_size": 200,'})), {}


@case("config_not_an_object", "JSON list", "must be a JSON object")
def _(env):
    return str(env.folder("exp", {"model.py": GOOD_MODEL, "config.json": "[1, 2]"})), {}


@case("nodes_not_a_list", "'nodes' entry that is not a list", "export the model again")
def _(env):
    return str(env.folder("exp", {"model.py": GOOD_MODEL, "config.json": '{"vocab_size": 9, "nodes": {"a": 1}}'})), {}


@case("syntax_error", "syntax error at line 3", "Fix that line")
def _(env):
    return str(env.folder("exp", {"model.py": "import torch\n\ndef broken(:\n    pass\n", "config.json": TINY})), {}


@case(
    "import_not_installed", "imports 'tbkit_no_such_module'", "not installed", "tbkit.install('tbkit_no_such_module')"
)
def _(env):
    return str(env.folder("exp", {"model.py": "import tbkit_no_such_module.layers\n", "config.json": TINY})), {}


@case("import_of_a_package_above", "imports 'mypkg'", "import-path problem", "Add --path", "mypkg.model:ClassName")
def _(env):
    env.folder("proj/mypkg", {"__init__.py": "", "layers.py": "Block = 1\n"})
    (env.inputs / "proj" / "mypkg" / "model.py").write_text("from mypkg.layers import Block\n")
    return str(env.inputs / "proj" / "mypkg" / "model.py"), {}


@case("code_raises_while_defining", "raised RuntimeError: exporter bug", "(line 2)")
def _(env):
    return str(
        env.folder("exp", {"model.py": "import torch\nraise RuntimeError('exporter bug')\n", "config.json": TINY})
    ), {}


@case("non_utf8_source_in_folder", "not UTF-8", "offset 0")
def _(env):
    return str(env.folder("exp", {"model.py": b"\xff\xfeimport torch\n", "config.json": TINY})), {}


@case("no_nn_module", "defines no nn.Module subclass", "class CustomTransformer(nn.Module)")
def _(env):
    code = "import torch.nn as nn\nfrom torch.nn import Linear\n\nclass Helper:\n    pass\n"
    return str(env.folder("exp", {"model.py": code, "config.json": TINY})), {}


@case("two_candidates", "several nn.Module classes (Alpha, Beta)", "model_name")
def _(env):
    code = "import torch.nn as nn\n\nclass Alpha(nn.Module):\n    pass\n\nclass Beta(nn.Module):\n    pass\n"
    return str(env.folder("exp", {"model.py": code, "config.json": TINY})), {}


@case("model_name_not_found", "model_name 'GPT'", "CustomTransformer")
def _(env):
    return str(env.folder("exp", {"model.py": GOOD_MODEL, "config.json": '{"model_name": "GPT", "vocab_size": 9}'})), {}


@case(
    "constructor_missing_argument",
    "CustomTransformer() requires vocab_size, which the config read from",
    "Add vocab_size to",
    "exp/config.json (the config tbkit read)",
)
def _(env):
    return str(env.folder("exp", {"model.py": GOOD_MODEL, "config.json": '{"d_model": 16}'})), {}


@case("constructor_raises", "building CustomTransformer(vocab_size=-5", "raised RuntimeError", "Check the constructor")
def _(env):
    bad = '{"vocab_size": -5, "d_model": 16, "nhead": 2, "num_layers": 1}'
    return str(env.folder("exp", {"model.py": GOOD_MODEL, "config.json": bad})), {}


@case("broken_forward_signature", "broken export", "mhsa_0_output, residual_0_output", "Export the model again")
def _(env):
    return str(EXPORTS / "broken_forward"), {}


@case("forward_requires_extra_argument", "requires lengths besides the token ids", "Give those arguments defaults")
def _(env):
    code = GOOD_MODEL.replace(
        "def forward(self, input_ids, attention_mask=None):\n        x = self.embedding_0_token",
        "def forward(self, input_ids, lengths, attention_mask=None):\n        x = self.embedding_0_token",
    )
    return str(env.folder("exp", {"model.py": code, "config.json": TINY})), {}


@case("forward_crashes_at_load", "load-time forward", "NameError", "at line 73 of model.py", "Fix the model's forward")
def _(env):
    code = GOOD_MODEL.replace("return self.lm_head(self.layernorm_final(x))", "return self.lm_head(undefined_name)")
    return str(env.folder("exp", {"model.py": code, "config.json": TINY})), {}


@case("forward_pools_the_sequence", "returned shape (1, 50)", "one vector per input position")
def _(env):
    code = GOOD_MODEL.replace(
        "return self.lm_head(self.layernorm_final(x))", "return self.lm_head(self.layernorm_final(x)).mean(1)"
    )
    return str(env.folder("exp", {"model.py": code, "config.json": TINY})), {}


@case("forward_returns_no_tensor", "holds no logits tensor", "Return the logits")
def _(env):
    code = GOOD_MODEL.replace("return self.lm_head(self.layernorm_final(x))", "return 'logits'")
    return str(env.folder("exp", {"model.py": code, "config.json": TINY})), {}


@case("bad_kind_argument", "kind= 'gpt' is not a model kind", "decoder, encoder, seq2seq")
def _(env):
    return str(EXPORTS / "gpt_rotary"), {"kind": "gpt"}


@case("declared_seq2seq_without_decoder_input", "declared seq2seq", "decoder_input_ids")
def _(env):
    return str(EXPORTS / "gpt_rotary"), {"kind": "seq2seq"}


# ---- real model code in the ecosystem's styles (issue 12) -----------------------------------
DATACLASS_MODEL = """
from dataclasses import dataclass
import torch.nn as nn


@dataclass
class GPTConfig:
    vocab_size: int = 50
    n_embd: int = 16


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size)

    def forward(self, idx):
        return self.head(self.wte(idx))
"""


@case(
    "unknown_config_keys", "config keys bogus, n_layers are not fields of GPTConfig", "vocab_size", "Remove or rename"
)
def _(env):
    cfg = '{"vocab_size": 50, "bogus": 1, "n_layers": 2}'
    return str(env.folder("exp", {"model.py": DATACLASS_MODEL, "config.json": cfg})), {}


@case("class_name_not_found", "model name 'Nope' names no nn.Module class", "(nn.Module classes defined there: GPT)")
def _(env):
    return str(env.folder("exp", {"model.py": DATACLASS_MODEL}) / "model.py") + ":Nope", {}


@case("class_name_twice_different", "names class 'GPT' but the model name says 'Other'", "Name the class once")
def _(env):
    return str(env.folder("exp", {"model.py": DATACLASS_MODEL}) / "model.py") + ":GPT", {"model_name": "Other"}


@case("guard_training_loop_at_import", "has a training loop (it calls", "at line 6", '__name__ == "__main__"')
def _(env):
    marker = env.inputs / "trained.txt"  # the snapshot shows it was never written: nothing ran
    code = (
        "import torch\nimport torch.nn as nn\nmodel = nn.Linear(2, 2)\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "for step in range(100000):\n    loss = model(torch.ones(1, 2)).sum()\n    loss.backward()\n    opt.step()\n"
    )
    return str(env.folder("exp", {"model.py": code + DATACLASS_MODEL})), {}


@case("guard_data_read_at_import", "reads the data file 'input.txt' with open() at line 2", "import_guard=False")
def _(env):
    code = "import torch.nn as nn\ntext = open('input.txt', 'r').read()\n" + DATACLASS_MODEL
    return str(env.folder("exp", {"model.py": code})), {}


@case("import_time_limit", "did not finish within the time limit of 1 s", "--import-timeout")
def _(env):
    code = "import time\ntime.sleep(60)\n" + DATACLASS_MODEL
    return str(env.folder("exp", {"model.py": code})), {"import_timeout": 1}


@case("import_time_limit_swallowed", "did not finish within the time limit of 0.5 s")
def _(env):
    code = "import time\nfor _ in range(600):\n    try:\n        time.sleep(0.1)\n    except Exception:\n        pass\n"
    return str(env.folder("exp", {"model.py": code + DATACLASS_MODEL})), {"import_timeout": 0.5}


@case("module_form_trains_at_import", "module pkg.model has a training loop", "at line 6")
def _(env):
    code = (
        "import torch\nimport torch.nn as nn\nmodel = nn.Linear(2, 2)\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n\n"
        "while True:\n    model(torch.ones(1, 2)).sum().backward()\n    opt.step()\n"
    )
    env.folder("proj/pkg", {"__init__.py": "", "model.py": code})
    return "pkg.model:Net", {"path": str(env.inputs / "proj")}


@case("module_form_time_limit", "importing module pkg.model did not finish within the time limit of 1 s")
def _(env):
    env.folder("proj/pkg", {"__init__.py": "", "model.py": "import time\ntime.sleep(60)\n"})
    return "pkg.model:Net", {"path": str(env.inputs / "proj"), "import_timeout": 1}


@case("relative_import_in_a_file", "relative import", "tbkit run pkg.model:ClassName --path")
def _(env):
    env.folder("proj/pkg", {"__init__.py": "", "layers.py": "Block = 1\n", "model.py": "from .layers import Block\n"})
    return str(env.inputs / "proj" / "pkg" / "model.py"), {}


@case("module_form_package_missing", "no module 'nosuchpkg'", "--path DIR")
def _(env):
    return "nosuchpkg.model:GPT", {"path": str(env.inputs)}


@case("path_option_not_a_folder", "--path", "is missing, not a folder")
def _(env):
    return "mypkg.model:GPT", {"path": str(env.inputs / "nope")}


@case("last_position_only_without_targets", "returned shape (1, 1, 50)", "last position only")
def _(env):
    code = DATACLASS_MODEL.replace("return self.head(self.wte(idx))", "return self.head(self.wte(idx))[:, -1:, :]")
    return str(env.folder("exp", {"model.py": code})), {}


@case("three_classes_two_roots", "several nn.Module classes (A, B, Block)", "FILE.py:ClassName")
def _(env):
    code = (
        "import torch.nn as nn\n\nclass Block(nn.Module):\n    pass\n\n"
        "class A(nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.b = Block()\n\n"
        "class B(nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.b = Block()\n"
    )
    return str(env.folder("exp", {"model.py": code})), {}


@case("hf_unknown_model_type", "model_type 'no-such-arch'", "cannot build")
def _(env):
    return str(env.folder("hf", {"config.json": '{"model_type": "no-such-arch", "vocab_size": 10}'})), {}


@case("hf_unknown_architecture", "architecture 'GPT2NoSuchHead'", "Fix architectures")
def _(env):
    cfg = '{"model_type": "gpt2", "architectures": ["GPT2NoSuchHead"], "n_embd": 8, "n_layer": 1, "n_head": 2}'
    return str(env.folder("hf", {"config.json": cfg})), {}


# ---- hostile or damaged inputs (issue 17) --------------------------------------------------
@case("config_nested_100000_deep", "more than 64 levels deep", "Flatten the config")
def _(env):
    deep = '{"a": ' * 100_000 + "1" + "}" * 100_000
    return str(env.folder("exp", {"model.py": DATACLASS_MODEL, "config.json": deep})), {}


@case("config_huge", "larger than the limit of 8388608 bytes", "Check this is the right file")
def _(env):
    huge = '{"vocab_size": 50, "pad": "' + "x" * (9 * 1024 * 1024) + '"}'
    return str(env.folder("exp", {"model.py": DATACLASS_MODEL, "config.json": huge})), {}


@case("constructor_error_quotes_5mb_value", "building", "characters omitted", "raised")
def _(env):
    big = '{"vocab_size": 50, "n_embd": "' + "y" * (5 * 1024 * 1024) + '"}'
    return str(env.folder("exp", {"model.py": DATACLASS_MODEL, "config.json": big})), {}


@case("model_py_is_a_named_pipe", "is a named pipe (FIFO), not a regular file", "ordinary file")
def _(env):
    folder = env.folder("exp", {"config.json": TINY})
    os.mkfifo(folder / "model.py")  # opening it for reading would block forever: it must never be opened
    return str(folder), {}


@case("source_file_is_a_named_pipe", "is a named pipe (FIFO)", "ordinary file")
def _(env):
    os.mkfifo(env.inputs / "pipe.py")
    return str(env.inputs / "pipe.py"), {}


@case("config_json_is_a_named_pipe", "is a named pipe (FIFO)", "ordinary file")
def _(env):
    folder = env.folder("exp", {"model.py": DATACLASS_MODEL})
    os.mkfifo(folder / "config.json")
    return str(folder), {}


@case("nul_bytes_in_model_code", "contains a NUL byte (line 2", "remove the NUL bytes")
def _(env):
    return str(env.folder("exp", {"model.py": b"import torch\nx = 1\x00\x00\n"})), {}


@case("password_in_gist_url", "not found, or it is private")
def _(env):
    return f"https://alice:{PASSWORD}@gist.github.com/alice/{GID}", env.kw()


@case("password_in_foreign_url", "not a gist URL", "***@")
def _(env):
    return f"https://bob:{PASSWORD}@example.com/alice/{GID}", {}


@case("password_in_malformed_gist_url", "could not find a gist id", "***@")
def _(env):
    return f"https://bob:{PASSWORD}@gist.github.com/alice", {}


# ---- the test ------------------------------------------------------------------------------
def _snapshot(root: Path, skip: Path) -> dict:
    out = {}
    for p in root.rglob("*"):
        if p == skip or skip in p.parents:
            continue
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, p.is_dir())
    return out


@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_input_gives_one_paragraph_and_writes_nothing(case_id, tmp_path, monkeypatch, capsys):
    setup, fragments, with_token = CASES[case_id]
    home, work, inputs, cache = (tmp_path / n for n in ("home", "work", "inputs", "cache"))
    for d in (home, work, inputs):
        d.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # a CI proxy must not see the fake API's traffic
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    for var in ("TBKIT_GITHUB_API", "TBKIT_OFFLINE", "TBKIT_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    if with_token:
        monkeypatch.setenv("GITHUB_TOKEN", SECRET)
    else:
        monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    monkeypatch.chdir(work)
    modules_before = {k for k in sys.modules if k.startswith("tbkit_user_model_")}

    with FakeGitHub() as server:
        env = Env(server, inputs, cache)
        source, kwargs = setup(env)
        before = _snapshot(tmp_path, cache)
        with pytest.raises(TbkitError) as info:
            tbkit.load(source, **kwargs)
        after = _snapshot(tmp_path, cache)

    err = info.value
    msg = str(err)
    assert "\n" not in msg and "Traceback" not in msg, msg
    assert len(msg) <= MAX_MESSAGE, f"not a paragraph: {len(msg)} characters"
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in: {msg}"
    assert err.cause and err.fix, "the message must name both the cause and the fix"
    captured = capsys.readouterr()
    for text in (msg, repr(err), captured.out, captured.err):
        assert SECRET not in text and PASSWORD not in text
    assert after == before, "something was written outside the cache directory"
    # Inside the cache only complete revisions may exist: <id>/<40-hex sha>/<plain file names>.
    if cache.exists():
        for p in cache.rglob("*"):
            rel = p.relative_to(cache).parts
            assert not any(part.startswith(".tmp-") for part in rel), p
            if len(rel) >= 2:
                assert re.fullmatch(r"[0-9a-f]{40}", rel[1]), p
    # A failed load leaves no half-registered module behind.
    assert {k for k in sys.modules if k.startswith("tbkit_user_model_")} <= modules_before


def test_corpus_is_large_enough():
    assert len(CASES) >= 25
