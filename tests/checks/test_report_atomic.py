"""Reports replace each other whole: a run writes into a fresh sibling folder and swaps it in, the
previous report stays readable until then, files get the user's umask, and ``tbkit.run`` in Python
turns a model's sys.exit / KeyboardInterrupt / hang into ERROR rows and leaves the caller's process
(random states, torch globals, working folder) as it found it."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import models as M
import tbkit
from tbkit.checks import report_folder
from tbkit.checks.base import REGISTRY, Status, register
from tbkit.checks.report import load_json, salvage

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = ROOT / "tests" / "fixtures" / "hostile"


@pytest.fixture
def temp_checks():
    added = []

    def add(check_id, func):
        register(check_id, tier=1, summary="test check")(func)
        added.append(check_id)

    yield add
    for check_id in added:
        REGISTRY.pop(check_id, None)


@pytest.fixture(scope="module")
def decoder():
    return M.loaded(M.build(M.HealthyDecoder))


def test_the_previous_report_stays_whole_until_the_new_one_is_swapped_in(temp_checks, decoder, tmp_path):
    out = tmp_path / "rep"
    tbkit.run(decoder, checks="summary", out_dir=out, progress=False)
    before = (out / "report.json").read_bytes()
    seen = []

    def peek(ctx):
        seen.append((out / "report.json").read_bytes())
        yield ctx.row(Status.PASS, "peeked", 1)

    temp_checks("t_peek_old", peek)
    report = tbkit.run(decoder, checks="t_peek_old", out_dir=out, progress=False)
    assert seen == [before]  # mid-run, the old report was still there and whole
    assert [r["check"] for r in load_json(out / "report.json")["rows"]] == ["t_peek_old"]
    assert report.json_path == out / "report.json"
    assert not report_folder.leftover_stagings(out)


def test_the_returned_report_points_at_the_swapped_in_plots(decoder, tmp_path):
    report = tbkit.run(decoder, checks="gradient_flow", out_dir=tmp_path / "rep", progress=False)
    paths = [f.path for f in report.figures if f.path is not None]
    assert paths and all(p.is_file() and p.parent == tmp_path / "rep" / "plots" for p in paths)
    assert "data:image/png;base64," in report._repr_html_()
    assert all(not f["path"].startswith("/") for f in report.to_dict()["figures"])


def test_a_run_that_fails_before_its_report_leaves_the_previous_one(decoder, tmp_path):
    out = tmp_path / "rep"
    tbkit.run(decoder, checks="summary", out_dir=out, progress=False)
    before = (out / "report.json").read_bytes()
    with pytest.raises(tbkit.TbkitError):
        tbkit.run(str(tmp_path / "no_such_model.py"), out_dir=out, progress=False)
    assert (out / "report.json").read_bytes() == before and not report_folder.leftover_stagings(out)


def test_an_out_folder_with_other_files_keeps_them(decoder, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    tbkit.run(decoder, checks="summary", out_dir=tmp_path, progress=False)
    tbkit.run(decoder, checks="summary", out_dir=tmp_path, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert load_json(tmp_path / "report.json")["finished"] is True and (tmp_path / "report.html").is_file()


def test_files_get_the_users_umask(tmp_path):
    code = textwrap.dedent(f"""
        import os
        os.umask(0o027)
        import models as M, tbkit
        tbkit.run(M.loaded(M.build(M.HealthyDecoder)), checks="summary", out_dir={str(tmp_path / "rep")!r},
                  progress=False)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("report.json", "report.html"):
        assert (tmp_path / "rep" / name).stat().st_mode & 0o777 == 0o640, name


@pytest.mark.parametrize(
    "raise_it, words",
    [
        (lambda: sys.exit(0), "sys.exit(0)"),
        (lambda: (_ for _ in ()).throw(KeyboardInterrupt()), "raised KeyboardInterrupt itself"),
        (lambda: time.sleep(60), "time limit of 0.5 s"),
    ],
)
def test_tbkit_run_turns_exits_interrupts_and_hangs_into_error_rows(temp_checks, decoder, raise_it, words):
    def hostile(ctx):
        yield ctx.row(Status.PASS, "before", 1)
        raise_it()

    temp_checks("t_hostile", hostile)
    report = tbkit.run(decoder, checks="t_hostile,summary", progress=False, check_timeout=0.5)
    statuses = [(r.check, r.status) for r in report.rows]
    assert ("t_hostile", Status.ERROR) in statuses and ("summary", Status.PASS) in statuses  # the run went on
    assert words in next(r.detail for r in report.rows if r.status is Status.ERROR)


def test_load_and_run_leave_the_callers_random_state_and_torch_globals(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    cwd = os.getcwd()
    lm = tbkit.load(str(HOSTILE / "globals.py"))
    tbkit.run(lm, checks="summary", progress=False)
    assert torch.get_default_dtype() is torch.float32 and torch.is_grad_enabled()
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert os.getcwd() == cwd


def test_a_dead_runs_report_is_closed_from_its_json_alone(decoder, tmp_path):
    out = tmp_path / "rep"
    tbkit.run(decoder, checks="summary", out_dir=out, progress=False)
    row = {"tier": 1, "check": "causal", "status": "ERROR", "metric": "process ended", "value": None,
           "threshold": "", "detail": "gone", "seconds": 1.0}  # fmt: skip
    d = salvage(out, "the process ended", row)
    assert d is not None and d["verdict"] == "FAIL" and d["interrupted"] is True
    assert json.loads((out / "report.json").read_text())["ended"] == "the process ended"
    assert "the process ended" in (out / "report.html").read_text()
