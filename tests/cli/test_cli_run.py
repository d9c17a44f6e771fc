"""`tbkit run` as a user runs it: a real subprocess, exit codes 0 / 1 / 2, --json purity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

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


# ---- entry points (issue 12) ----------------------------------------------------------------
PUBLISHED = ROOT / "tests" / "fixtures" / "published"


def test_entry_point_forms_run_without_glue(tmp_path):
    forms = [
        (f"{PUBLISHED / 'three_classes.py'}:TinyLM",),
        (str(PUBLISHED / "three_classes.py"), "--model-name", "TinyLM"),
        ("mingpt_like.model:GPT", "--path", str(PUBLISHED)),
        (str(PUBLISHED / "nanogpt_like"),),
    ]
    for form in forms:
        proc = tbkit_cmd("run", *form, "--checks", "summary", "--no-progress", "--out", "rep", cwd=tmp_path)
        assert proc.returncode == 0, (form, proc.stdout[-2000:], proc.stderr[-2000:])
        assert "verdict: PASS" in proc.stdout


# ---- bad inputs to `tbkit run` (issue 17 item 6): one paragraph, exit 2, nothing written ----------
PASSWORD = "hunter2-CLI-PASSWORD"
MAX_MESSAGE = 2000
TINY_MODEL = (PUBLISHED / "three_classes.py").read_text()


def _bad_cli_inputs(tmp_path: Path) -> list:
    """(arguments, words in the message) for each bad input; files are made here."""
    (tmp_path / "report.txt").write_text("not a folder")
    fifo = tmp_path / "fifo_model"
    fifo.mkdir()
    os.mkfifo(fifo / "model.py")
    deep = tmp_path / "deep"
    deep.mkdir()
    (deep / "model.py").write_text(TINY_MODEL)
    (deep / "config.json").write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
    nul = tmp_path / "nul.py"
    nul.write_bytes(b"import torch\n\x00\n")
    stuck = tmp_path / "stuck.py"  # stuck inside one C call: no signal can interrupt it
    stuck.write_text("import itertools\nsum(itertools.repeat(1, 10**13))\n" + TINY_MODEL)
    return [
        (("--out", "report.txt"), "is a regular file, not a folder"),
        (("--out", "report.txt/sub"), "cannot be created"),
        (("--data", "no_such.txt", "--tier", "3"), "--data 'no_such.txt' is missing"),
        ((str(fifo),), "named pipe (FIFO)"),
        ((str(deep),), "more than 64 levels deep"),
        ((str(nul),), "contains a NUL byte"),
        ((f"{PUBLISHED / 'three_classes.py'}:Nope",), "names no nn.Module class"),
        ((str(PUBLISHED / "trains_at_import.py"),), "at line 18"),
        ((f"https://alice:{PASSWORD}@gist.github.com/alice/{'ab' * 10}", "--offline"), "not in the cache"),
        ((f"https://alice:{PASSWORD}@example.com/x",), "***@example.com"),
        (("mypkg.model:GPT", "--path", "no_such_dir"), "is missing, not a folder"),
    ]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_bad_inputs_exit_2_with_one_short_paragraph_and_no_password(tmp_path, monkeypatch):
    monkeypatch.setenv("TBKIT_CACHE_DIR", str(tmp_path / "cache"))
    for args, words in _bad_cli_inputs(tmp_path):
        proc = tbkit_cmd("run", *args, "--no-progress", cwd=tmp_path)
        err = proc.stderr
        assert proc.returncode == 2, (args, proc.stdout[-1000:], err[-2000:])
        assert words in err, (args, err)
        assert "Traceback" not in err and err.startswith("tbkit: ") and err.count("\n") == 1, (args, err)
        assert len(err) <= MAX_MESSAGE, (args, len(err))
        assert PASSWORD not in err and PASSWORD not in proc.stdout
        assert not (tmp_path / "tbkit-report").exists(), args
    # stuck inside one C call (no signal reaches it): the supervisor kills the worker once the limit
    # and its grace are over, and says so in one paragraph (a loading error: exit 2)
    proc = tbkit_cmd("run", "stuck.py", "--import-timeout", "1", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("tbkit: loading the model")
    assert "time limit of 1 s" in proc.stderr and "Traceback" not in proc.stderr
    assert "Traceback" not in proc.stderr


def test_usage_and_path_errors_answer_before_torch_is_imported(tmp_path):
    """Issue 13 item 4: arguments, paths, gist ids and options are checked before torch loads."""
    (tmp_path / "file.txt").write_text("x")
    cases = [
        ["run", "./no_such_folder"],
        ["run", "zz-not-a-gist!"],
        ["run", "https://gist.github.com/alice"],
        ["run", "--out", "file.txt"],
        ["run", "--data", "missing.txt"],
        ["run", "--checks", "causal,casual"],
        ["run", "pkg.mod:Cls", "--path", "nowhere"],
        ["run", "nosuchpkg.mod:Cls"],
        ["run", "file.txt"],
    ]
    script = (
        "import sys, json\nfrom tbkit.cli import main\nout = []\n"
        f"for argv in {cases!r}:\n    rc = main(argv)\n    out.append((rc, 'torch' in sys.modules))\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results == [[2, False]] * len(cases), (results, proc.stderr)
