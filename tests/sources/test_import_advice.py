"""Advice that fits (issue 22, item 7): every missing import named at once, from the syntax tree,
before the code runs; "export the model again" only for Transformer Builder exports; errors
whose cause is elsewhere (a model-parallel initialisation) get advice about that cause."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tbkit
from tbkit.errors import SourceError

ROOT = Path(__file__).resolve().parents[2]

NET = """
class Net(nn.Module):
    def __init__(self, vocab_size=20, d_model=8):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, input_ids, attention_mask=None):
        return self.head(self.tok(input_ids))
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load_error(*args, **kwargs) -> str:
    with pytest.raises(SourceError) as info:
        tbkit.load(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


# ---- missing imports, all at once ----------------------------------------------------------
def test_all_missing_imports_are_named_at_once_before_anything_runs(tmp_path):
    marker = tmp_path / "ran.txt"
    code = f"""
        import torch.nn as nn
        import tbkit_missing_alpha
        from tbkit_missing_beta import Block
        import tbkit_missing_gamma.layers
        import sklearn.linear_model
        import os.tbkit_missing_submodule
        try:
            import tbkit_missing_optional
        except ImportError:
            tbkit_missing_optional = None
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            import tbkit_missing_for_types

        def later():
            import tbkit_missing_in_a_function

        open({str(marker)!r}, "w").write("ran")
    """
    model = write(tmp_path / "m" / "model.py", textwrap.dedent(code) + NET)
    msg = load_error(f"{model}:Net")
    assert not marker.exists(), "the code ran although its imports were known to be missing"
    for name, line in (
        ("tbkit_missing_alpha", 3),
        ("tbkit_missing_beta", 4),
        ("tbkit_missing_gamma", 5),
        ("os.tbkit_missing_submodule", 7),
    ):
        assert f"'{name}' (line {line}" in msg, msg
    assert "(line 7, not in the installed os)" in msg and "'os'" not in msg
    for ignored in ("tbkit_missing_optional", "tbkit_missing_for_types", "tbkit_missing_in_a_function"):
        assert ignored not in msg
    assert "tbkit.install('tbkit_missing_alpha', 'tbkit_missing_beta', 'tbkit_missing_gamma'" in msg
    sklearn_missing = _missing("sklearn")
    assert ("'sklearn' (line 6, pip package scikit-learn)" in msg) == sklearn_missing
    assert ("'scikit-learn'" in msg) == sklearn_missing


def _missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


def test_one_missing_import_keeps_the_one_package_message(tmp_path):
    model = write(tmp_path / "m" / "model.py", "import torch.nn as nn\nimport cv2\n" + NET)
    if not _missing("cv2"):
        pytest.skip("cv2 is installed here")
    msg = load_error(f"{model}:Net")
    assert "imports 'cv2' (line 2, pip package opencv-python), which is not installed" in msg
    assert "tbkit.install('opencv-python')" in msg


def test_guarded_imports_and_sys_path_changes_are_not_refused(tmp_path):
    write(tmp_path / "lib" / "tbkit_scan_helper.py", "import torch.nn as nn\nHEAD = nn.Linear\n")
    code = f"""
        import sys
        import torch.nn as nn
        try:
            import tbkit_missing_fast_kernels
        except (ImportError, OSError):
            tbkit_missing_fast_kernels = None
        sys.path.insert(0, {str(tmp_path / "lib")!r})
        import tbkit_scan_helper
    """
    model = write(tmp_path / "m" / "model.py", textwrap.dedent(code) + NET)
    assert tbkit.load(f"{model}:Net").vocab_size == 20
    sys.path[:] = [p for p in sys.path if p != str(tmp_path / "lib")]


def test_missing_imports_in_a_packaged_module_are_named_together(tmp_path):
    write(tmp_path / "src" / "pkg" / "__init__.py", "")
    write(
        tmp_path / "src" / "pkg" / "layers.py",
        "import torch.nn as nn\nimport tbkit_missing_one\nimport tbkit_missing_two\nfrom tbkit_missing_three import x\n",
    )
    write(tmp_path / "src" / "pkg" / "model.py", "import torch.nn as nn\nfrom .layers import nn as _nn\n" + NET)
    msg = load_error("pkg.model:Net", path=tmp_path / "src")
    assert "imports 3 modules that are not installed" in msg
    assert "tbkit.install('tbkit_missing_one', 'tbkit_missing_two', 'tbkit_missing_three')" in msg


def test_a_local_package_above_is_a_path_problem_and_the_others_are_named_too(tmp_path):
    write(tmp_path / "proj" / "mypkg" / "__init__.py", "")
    write(tmp_path / "proj" / "mypkg" / "layers.py", "X = 1\n")
    code = "import torch.nn as nn\nfrom mypkg.layers import X\nimport tbkit_missing_extra\n"
    model = write(tmp_path / "proj" / "mypkg" / "model.py", code + NET)
    msg = load_error(f"{model}:Net")
    assert "import-path problem" in msg and f"Add --path {tmp_path / 'proj'}" in msg
    assert "it also imports 'tbkit_missing_extra' (line 3), which are not installed" in msg
    assert "tbkit.install('tbkit_missing_extra')" in msg


# ---- export advice only for exports --------------------------------------------------------
EXPORT_STYLE = """
import torch.nn as nn


class CustomTransformer(nn.Module):
    def __init__(self, vocab_size=20):
        super().__init__()
        if vocab_size < 0:
            raise ValueError("vocab_size must be positive")
        self.embedding_0_token = nn.Embedding(vocab_size, 8)
        self.lm_head = nn.Linear(8, vocab_size)

    def forward(self, input_ids, attention_mask=None):
        return self.lm_head(self.embedding_0_token(input_ids))
"""

MODEL_PARALLEL = """
import torch.distributed as dist
import torch.nn as nn


class ParallelLM(nn.Module):
    def __init__(self, vocab_size=20):
        super().__init__()
        self.world = dist.get_world_size()  # as model-parallel layers do in __init__
        self.tok = nn.Embedding(vocab_size, 8)

    def forward(self, input_ids, attention_mask=None):
        return self.tok(input_ids)
"""


def test_model_parallel_init_error_gets_distributed_advice_not_export_advice(tmp_path):
    model = write(tmp_path / "mp" / "model.py", MODEL_PARALLEL)
    msg = load_error(f"{model}:ParallelLM")
    assert "building ParallelLM" in msg and "init_process_group" in msg
    assert "export the model" not in msg.lower()


def test_model_parallel_init_at_import_gets_the_same_advice(tmp_path):
    code = "import torch.distributed as dist\nimport torch.nn as nn\nRANK = dist.get_rank()\n" + NET
    msg = load_error(f"{write(tmp_path / 'mp' / 'model.py', code)}:Net")
    assert "raised" in msg and "(line 3)" in msg and "init_process_group" in msg
    assert "export the model" not in msg.lower()


def test_export_advice_only_for_an_export(tmp_path):
    export = write(tmp_path / "exp" / "model.py", EXPORT_STYLE)
    msg = load_error(export.parent, config={"vocab_size": -1})
    assert "export the model again from Transformer Builder" in msg
    plain = write(tmp_path / "plain" / "model.py", EXPORT_STYLE.replace("embedding_0_token", "tok"))
    msg = load_error(plain.parent, config={"vocab_size": -1})
    assert "raised ValueError" in msg and "Check the constructor against" in msg
    assert "export the model" not in msg.lower()


def test_syntax_error_advice_mentions_export_only_for_an_export(tmp_path):
    broken = EXPORT_STYLE + "\ndef oops(:\n    pass\n"
    msg = load_error(write(tmp_path / "exp" / "model.py", broken).parent)
    assert "syntax error" in msg and "export the model again" in msg
    msg = load_error(write(tmp_path / "plain" / "model.py", broken.replace("embedding_0_token", "tok")).parent)
    assert "syntax error" in msg and "export" not in msg.lower()


# ---- the CLI -------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_names_all_missing_imports_in_one_paragraph(tmp_path):
    code = "import torch.nn as nn\nimport tbkit_missing_a\nimport tbkit_missing_b\nimport tbkit_missing_c\n" + NET
    model = write(tmp_path / "model.py", code)
    env = {"PYTHONPATH": str(ROOT / "python"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "tbkit", "run", f"{model}:Net", "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("tbkit:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "imports 3 modules that are not installed" in lines[0]
    assert "tbkit.install('tbkit_missing_a', 'tbkit_missing_b', 'tbkit_missing_c')" in lines[0]


def test_conditional_imports_and_imports_after_code_are_left_to_the_real_import(tmp_path):
    code = """
        import sys
        import torch.nn as nn
        try:
            import tbkit_missing_apex
        except ImportError:
            print("apex not found, using the PyTorch layers")
        if sys.version_info < (3, 0):
            import tbkit_missing_py2_only
        if nn.Module is None:
            import tbkit_missing_never
        def _setup():
            pass
        _setup()
        import tbkit_missing_after_a_call
    """
    msg = load_error(f"{write(tmp_path / 'm' / 'model.py', textwrap.dedent(code) + NET)}:Net")
    assert "imports 'tbkit_missing_after_a_call'" in msg  # named by the real import, only it
    for name in ("apex", "py2_only", "never"):
        assert f"tbkit_missing_{name}" not in msg


LIBRARY_MODEL = """
import torch
from torch import nn

class LibraryLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(32, 8)

    def forward(self, input_ids):
        raise ValueError("Input language unknown. Please call set_default_language()")
"""


def test_a_library_model_that_fails_its_first_call_points_at_the_config_not_at_its_code(tmp_path, monkeypatch):
    """A model class from an installed library (transformers' modeling files): its forward is not the user's
    to fix, so the advice names the library and the config, not "fix the model's forward"."""
    site = tmp_path / "lib" / "site-packages"
    (site / "fakelib").mkdir(parents=True)
    (site / "fakelib" / "__init__.py").write_text("__version__ = '9.1'\n")
    (site / "fakelib" / "modeling.py").write_text(LIBRARY_MODEL)
    monkeypatch.syspath_prepend(str(site))
    from fakelib.modeling import LibraryLM

    with pytest.raises(SourceError) as caught:
        tbkit.load(LibraryLM())
    message = str(caught.value)
    assert "Input language unknown" in message
    assert "LibraryLM is fakelib 9.1's own code" in message and "config" in message
    assert "Fix the model's forward" not in message and "Traceback" not in message
    for name in [m for m in sys.modules if m.startswith("fakelib")]:
        monkeypatch.delitem(sys.modules, name)
