"""The runner: streaming rows, crashes as ERROR rows, Ctrl-C keeps rows on disk, the install gate
turned into SKIP rows, usage errors, and the caller's model and process left as they were."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import models as M
import tbkit
from tbkit.checks.base import REGISTRY, Status, register
from tbkit.errors import InstallRefused, UsageError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def temp_checks():
    """Register checks for one test under tier 1 and remove them afterwards."""
    added = []

    def add(check_id, func, needs=()):
        register(check_id, tier=1, summary="test check", needs=needs)(func)
        added.append(check_id)

    yield add
    for check_id in added:
        REGISTRY.pop(check_id, None)


@pytest.fixture(scope="module")
def decoder():
    return M.loaded(M.build(M.HealthyDecoder))


def test_a_crashing_check_becomes_an_error_row_and_the_rest_still_run(temp_checks, decoder, tmp_path):
    def boom(ctx):
        yield ctx.row(Status.PASS, "first", 1)
        raise ValueError("the check itself is broken")

    temp_checks("t_boom", boom)
    report = tbkit.run(decoder, checks="t_boom,summary", out_dir=tmp_path, progress=False)
    boom_rows = [r for r in report.rows if r.check == "t_boom"]
    assert [r.status.value for r in boom_rows] == ["PASS", "ERROR"]
    assert "ValueError: the check itself is broken" in boom_rows[1].detail
    assert "Traceback" in boom_rows[1].detail
    assert any(r.check == "summary" for r in report.rows)
    assert report.verdict is Status.FAIL  # ERROR counts as FAIL in the verdict


def test_a_check_that_yields_nothing_is_an_error_not_a_silent_pass(temp_checks, decoder, tmp_path):
    temp_checks("t_silent", lambda ctx: iter(()))
    report = tbkit.run(decoder, checks="t_silent", out_dir=tmp_path, progress=False)
    (row,) = report.rows
    assert row.status is Status.ERROR and "without producing a row" in row.detail


def test_report_json_is_rewritten_after_every_row(temp_checks, decoder, tmp_path):
    seen = []

    def peek(ctx):
        # the run writes into its staging folder (ctx.out_dir), swapped in at the end
        yield ctx.row(Status.PASS, "one", 1)
        seen.append(json.loads((ctx.out_dir / "report.json").read_text())["rows"])
        yield ctx.row(Status.PASS, "two", 2)
        seen.append(json.loads((ctx.out_dir / "report.json").read_text())["rows"])

    temp_checks("t_peek", peek)
    tbkit.run(decoder, checks="summary,t_peek", out_dir=tmp_path, progress=False)
    assert [r["metric"] for r in seen[0]][-1] == "one"
    assert [r["metric"] for r in seen[1]][-2:] == ["one", "two"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report")], "temp files left behind"


def test_ctrl_c_keeps_the_finished_rows_on_disk(temp_checks, decoder, tmp_path):
    def interrupt(ctx):
        yield ctx.row(Status.PASS, "before", 1)
        os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C (a KeyboardInterrupt the model raises is an ERROR)
        time.sleep(5)

    temp_checks("t_interrupt", interrupt)
    with pytest.raises(KeyboardInterrupt):
        tbkit.run(decoder, checks="summary,t_interrupt", out_dir=tmp_path, progress=False)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["interrupted"] is True and data["finished"] is False
    assert {r["check"] for r in data["rows"]} == {"summary", "t_interrupt"}
    assert (tmp_path / "report.html").is_file()
    assert all(m.training == M.build(M.HealthyDecoder).training for m in decoder.module.modules())


def test_a_users_check_runs_after_tbkits_own_whenever_it_was_registered(temp_checks):
    """A check registered before tbkit imported its tiers sits first in the registry; the run
    order is still by tier, tbkit's own checks first (the Ctrl-C test above relied on this)."""
    from tbkit.checks.runner import select_checks

    temp_checks("t_first", lambda ctx: iter(()))
    select_checks(tiers=(1, 2))  # the tiers are imported
    others = [(k, v) for k, v in REGISTRY.items() if k != "t_first"]
    first = REGISTRY["t_first"]
    REGISTRY.clear()
    REGISTRY.update([("t_first", first), *others])  # as if registered before the tiers
    try:
        assert [s.id for s in select_checks(checks="t_first,summary,capacity")] == ["summary", "t_first", "capacity"]
        by_tier = [s.id for s in select_checks(tiers=(1,))]
        assert by_tier[0] == "summary" and by_tier[-1] == "t_first"
    finally:
        REGISTRY.clear()
        REGISTRY.update([*others, ("t_first", first)])


def test_install_refusal_becomes_one_skip_row_with_the_gates_reason(temp_checks, decoder, tmp_path, monkeypatch):
    import tbkit.guard.gate

    calls = []

    def refuse(*needs, **kw):
        calls.append(needs)
        raise InstallRefused(
            "installing captum would replace numpy 2.4.6, which this process has loaded",
            "Restart the runtime, then install before importing numpy.",
        )

    monkeypatch.setattr(tbkit.guard.gate, "ensure", refuse)

    def never(ctx):
        raise AssertionError("must not run when its requirements were refused")

    temp_checks("t_needs", never, needs=("captum>=0.9",))
    report = tbkit.run(decoder, checks="t_needs,summary", out_dir=tmp_path, progress=False)
    (row,) = [r for r in report.rows if r.check == "t_needs"]
    assert calls == [("captum>=0.9",)]
    assert row.status is Status.SKIP and "Restart the runtime" in row.detail
    assert report.verdict is Status.PASS  # a SKIP neither raises nor lowers the verdict


def test_an_install_that_fails_offline_is_a_skip_not_a_model_error(temp_checks, decoder, tmp_path, monkeypatch):
    """Offline or no such version: the check could not run, the model is not at fault."""
    import tbkit.guard.gate
    from tbkit.errors import InstallFailed

    def offline(*needs, **kw):
        raise InstallFailed(
            "pip could not plan captum>=0.9 from https://pypi.org/simple: the index is "
            "unreachable. Nothing was installed and this environment is unchanged",
            "Check that the index is reachable, or pass find_links=.",
        )

    monkeypatch.setattr(tbkit.guard.gate, "ensure", offline)
    temp_checks("t_offline", lambda ctx: iter(()), needs=("captum>=0.9",))
    report = tbkit.run(decoder, checks="t_offline", out_dir=tmp_path, progress=False)
    (row,) = report.rows
    assert row.status is Status.SKIP and "unreachable" in row.detail and row.metric == "requirements"
    assert report.verdict is Status.PASS


def test_checks_run_after_the_gate_allows_their_needs(temp_checks, decoder, tmp_path, monkeypatch):
    """The gate itself is tested with real installs elsewhere; here: the runner asks it first,
    with the check's requirements, and runs the check when it returns."""
    import tbkit.guard.gate

    order = []
    monkeypatch.setattr(tbkit.guard.gate, "ensure", lambda *needs, **kw: order.append(("ensure", needs)))

    def check(ctx):
        order.append(("check", ()))
        yield ctx.row(Status.PASS, "ran", 1)

    temp_checks("t_needs_ok", check, needs=("numpy", "tqdm"))
    report = tbkit.run(decoder, checks="t_needs_ok", out_dir=tmp_path, progress=False)
    assert order == [("ensure", ("numpy", "tqdm")), ("check", ())]
    assert [(r.metric, r.status.value) for r in report.rows] == [("ran", "PASS")]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"checks": "causal,nope"}, "unknown check id 'nope'"),
        ({"tiers": (7,)}, "unknown tier '7'"),
        ({"kind": "decodr"}, "unknown model kind"),
        ({"device": "cuda:0" if not torch.cuda.is_available() else "nonsense"}, "device"),
    ],
)
def test_usage_errors_are_one_paragraph(kwargs, words, decoder, tmp_path):
    with pytest.raises(UsageError) as info:
        tbkit.run(decoder, out_dir=tmp_path, progress=False, **kwargs)
    text = str(info.value)
    assert words in text and "\n" not in text
    assert not (tmp_path / "report.json").exists()


def test_unknown_check_error_lists_the_valid_ids(decoder, tmp_path):
    with pytest.raises(UsageError, match="tier 1: summary, conventions, shape, batch_equivalence, causal"):
        tbkit.run(decoder, checks="casual", out_dir=tmp_path, progress=False)


def test_run_leaves_weights_modes_device_and_rng_as_they_were(tmp_path):
    lm = M.loaded(M.build(M.HealthyDecoder))
    lm.module.train()
    lm.module.blocks[0].eval()  # a deliberate mixed state must survive
    before = {k: v.clone() for k, v in lm.module.state_dict().items()}
    modes = [m.training for m in lm.module.modules()]
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    tbkit.run(lm, out_dir=tmp_path, progress=False, options={"speed_seconds_per_point": 0.02})
    assert torch.equal(torch.rand(3), expected_next), "the caller's RNG stream was consumed"
    after = lm.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a check changed the weights"
    assert [m.training for m in lm.module.modules()] == modes


def test_kind_override_on_a_loaded_model(tmp_path):
    lm = M.loaded(M.build(M.HealthyDecoder))
    report = tbkit.run(lm, kind="encoder", checks="causal", out_dir=tmp_path, progress=False)
    (row,) = report.rows
    assert row.status is Status.SKIP and "bidirectional (encoder)" in row.detail
    assert lm.kind == "decoder"  # the caller's object is not changed


def test_same_seed_same_rows(tmp_path):
    lm = M.loaded(M.build(M.HealthyDecoder))
    checks = "batch_equivalence,stability,init,gradient_flow"
    a = tbkit.run(lm, checks=checks, out_dir=tmp_path / "a", progress=False, seed=3)
    b = tbkit.run(lm, checks=checks, out_dir=tmp_path / "b", progress=False, seed=3)
    assert [(r.metric, r.value) for r in a.rows] == [(r.metric, r.value) for r in b.rows]


def test_provenance_is_printed_first(tmp_path, capsys):
    tbkit.run(M.loaded(M.build(M.HealthyDecoder)), checks="summary", out_dir=tmp_path, progress=False)
    out = capsys.readouterr().out
    assert out.startswith("tbkit: HealthyDecoder: decoder (declared)")
    assert "model code from models:HealthyDecoder" in out


@pytest.mark.slow
def test_tier1_runs_without_pip_and_imports_no_tier2_3_libraries(tmp_path):
    """In a fresh interpreter: any subprocess start fails loudly, and after a full Tier 1 run
    captum, lightning and optuna are not imported. The libraries Colab already has loaded are
    imported first (torch's own import asks ldconfig for libdl: not ours to forbid)."""
    script = textwrap.dedent(f"""
        import subprocess, os, sys
        import torch, numpy, pandas, matplotlib, tqdm
        def refuse(*a, **k):
            raise AssertionError(f"Tier 1 started a process: {{a!r}}")
        subprocess.Popen = refuse
        os.system = refuse
        os.posix_spawn = refuse
        import tbkit
        report = tbkit.run(None, out_dir={str(tmp_path)!r}, progress=False, options={{"speed_seconds_per_point": 0.02}})
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("captum", "lightning", "optuna",
                       "optuna_integration", "pytorch_lightning", "pip"))
        print("VERDICT", report.verdict.value, "ROWS", len(report.rows), "HEAVY", heavy)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("VERDICT"))
    assert "HEAVY []" in line
    assert line.split()[1] in ("PASS", "WARN") and int(line.split()[3]) > 11
    assert not [r for r in json.loads((tmp_path / "report.json").read_text())["rows"] if r["status"] == "ERROR"]


def test_without_out_dir_the_api_writes_no_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = tbkit.run(M.loaded(M.build(M.HealthyDecoder)), checks="summary,init", progress=False)
    assert report.json_path is None and report.rows
    assert list(tmp_path.iterdir()) == []
    os.chdir(ROOT)


def test_runner_report_and_tier1_modules_import_nothing_heavy():
    """`tbkit run --help` and `import tbkit` stay fast: torch, pandas, matplotlib load on use."""
    code = (
        "import sys, tbkit.checks.runner, tbkit.checks.report, tbkit.cli.run, tbkit.cli._supervise, "
        "tbkit.checks.tier1, tbkit.checks.inputs; "
        "print(sorted(m for m in ('torch', 'pandas', 'matplotlib', 'numpy', 'tqdm') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.slow
def test_a_real_sigint_mid_run_keeps_the_finished_rows(tmp_path):
    """SIGINT (what Ctrl-C and a notebook's interrupt send) while `speed` is measuring: every row
    finished before it is on disk, the report says interrupted, and the interrupt propagates."""
    import signal
    import time

    out = tmp_path / "rep"
    script = textwrap.dedent(f"""
        import sys, tbkit
        try:
            tbkit.run(None, out_dir={str(out)!r}, progress=False, options={{"speed_seconds_per_point": 60}})
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
            sys.exit(130)
        print("FINISHED", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            rows = []
            for staged in tmp_path.glob(".rep.tbkit-*/report.json"):  # the run's staging folder
                try:
                    rows = json.loads(staged.read_text())["rows"]
                except (FileNotFoundError, json.JSONDecodeError, KeyError):
                    pass
            if any(r["check"] == "memory" for r in rows):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the run never reached the memory check")
        time.sleep(1.0)  # now inside speed's long measurement
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "INTERRUPTED" in stdout and "finished rows were kept in" in stdout
    data = json.loads((out / "report.json").read_text())
    assert data["interrupted"] is True and data["finished"] is False
    checks = [r["check"] for r in data["rows"]]
    assert checks[0] == "summary" and "memory" in checks and "gradient_flow" in checks
    assert "speed" not in checks  # it was interrupted, not reported as done
    assert (out / "report.html").is_file()


def test_without_tqdm_progress_is_one_plain_line_per_check(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` now raises ImportError
    monkeypatch.delitem(sys.modules, "tqdm.auto", raising=False)
    tbkit.run(M.loaded(M.build(M.HealthyDecoder)), checks="summary", out_dir=tmp_path, progress=True)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("tbkit: ")]
    assert len(lines) == 1 and lines[0].startswith("tbkit: [1/1] summary: ")
