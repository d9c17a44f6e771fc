"""`tbkit run` as a user runs it: a real subprocess, exit codes 0 / 1 / 2, --json purity."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # each test starts the real command in a fresh interpreter

LEAKY = textwrap.dedent("""
    import torch
    import torch.nn as nn


    class LeakyGPT(nn.Module):
        \"\"\"A decoder whose mask lets position t see t + 1.\"\"\"

        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(61, 16)
            self.pos = nn.Embedding(16, 16)
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.head = nn.Linear(16, 61)

        def forward(self, input_ids, attention_mask=None):
            T = input_ids.shape[1]
            x = self.tok(input_ids) + self.pos(torch.arange(T, device=input_ids.device))
            leaky = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(diagonal=2)  # should be 1
            a, _ = self.attn(x, x, x, attn_mask=leaky, need_weights=False)
            print("debug print left in forward")  # must not spoil --json output
            return self.head(x + a)
""")


def tbkit_cmd(*args, cwd):
    return subprocess.run([sys.executable, "-m", "tbkit", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_json_mode_prints_only_the_report_on_stdout(tmp_path):
    proc = tbkit_cmd(
        "run", "--json", "--no-progress", "--checks", "summary,causal,padding", "--out", "rep", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # the whole stdout is one JSON document
    assert data["verdict"] == "PASS" and data["finished"] is True
    assert [r["check"] for r in data["rows"]][:1] == ["summary"]
    assert data["model"]["provenance"]["source"] == "example"
    assert "model code from tiny_gpt" in proc.stderr  # provenance still shown, on stderr
    assert "verdict: PASS" in proc.stderr
    assert (tmp_path / "rep" / "report.json").is_file() and (tmp_path / "rep" / "report.html").is_file()


def test_a_broken_model_exits_1_and_names_the_failing_rows(tmp_path):
    (tmp_path / "leaky.py").write_text(LEAKY)
    proc = tbkit_cmd(
        "run", "leaky.py", "--kind", "decoder", "--checks", "causal,determinism", "--no-progress", cwd=tmp_path
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "verdict: FAIL (1 PASS, 3 FAIL)" in out
    assert "FAIL  causal: max change at t < s (no_grad): changing input token" in out
    assert "report: tbkit-report/report.html" in out  # the default output folder
    assert (tmp_path / "tbkit-report" / "report.html").is_file()

    proc = tbkit_cmd("run", "leaky.py", "--kind", "decoder", "--checks", "causal", "--json", "--out", "j", cwd=tmp_path)
    assert proc.returncode == 1
    data = json.loads(proc.stdout)  # the model's own prints went to stderr
    assert data["verdict"] == "FAIL" and "debug print left in forward" in proc.stderr


def test_usage_and_loading_errors_exit_2_with_one_paragraph(tmp_path):
    cases = [
        (("run", "--checks", "causal,casual"), "unknown check id 'casual'"),
        (("run", "--tier", "1,9"), "unknown tier '9'"),
        (("run", str(tmp_path / "missing.py")), "no such file or folder"),
    ]
    for args, words in cases:
        proc = tbkit_cmd(*args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        assert words in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert proc.stderr.startswith("tbkit: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "tbkit-report").exists()


def test_sha256_pin_refuses_other_code_before_it_runs(tmp_path):
    """--sha256: the content hash shown on load must match, or nothing of model.py runs (exit 2)."""
    marker = tmp_path / "ran"
    (tmp_path / "model.py").write_text(
        LEAKY.replace("import torch\n", f"import torch\nopen({str(marker)!r}, 'w').close()\n", 1)
    )
    proc = tbkit_cmd(
        "run",
        "model.py",
        "--kind",
        "decoder",
        "--checks",
        "summary",
        "--no-progress",
        "--sha256",
        "0" * 64,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "sha256" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists(), "model code ran although its hash did not match"
    good = next(
        ln.split()[-1]
        for ln in tbkit_cmd(
            "run", "model.py", "--kind", "decoder", "--checks", "summary", "--no-progress", cwd=tmp_path
        ).stdout.splitlines()
        if ln.strip().startswith("content sha256")
    )
    marker.unlink()
    proc = tbkit_cmd(
        "run", "model.py", "--kind", "decoder", "--checks", "summary", "--no-progress", "--sha256", good, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
