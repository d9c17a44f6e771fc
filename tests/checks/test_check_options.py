"""A run's options are declared and checked: an unknown name or a value of the wrong type is one
paragraph naming the valid ones, in the CLI (exit 2) and in Python, before any model code runs and
before anything is written; older flat names are aliases that never silently win; an override
changes the verdict and the plotted threshold."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import models as M
import tbkit
from tbkit.checks import CheckContext, validate_options
from tbkit.checks.tier2 import capacity
from tbkit.errors import UsageError

# a model whose import and construction leave a mark: the usage error must come before either
MARKING_MODEL = textwrap.dedent("""
    from pathlib import Path

    import torch.nn as nn

    MARKER = Path(__file__).with_name("marker.txt")
    MARKER.write_text("model.py was imported")


    class Marking(nn.Module):
        def __init__(self):
            super().__init__()
            MARKER.write_text("Marking() was built")
            self.tok = nn.Embedding(32, 8)
            self.head = nn.Linear(8, 32)

        def forward(self, input_ids, attention_mask=None):
            return self.head(self.tok(input_ids))
""")


@pytest.fixture
def marking_model(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.py").write_text(MARKING_MODEL)
    return src


def test_cli_unknown_option_exits_2_naming_the_valid_options(tmp_path, marking_model):
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "tbkit", "run", str(marking_model / "model.py"), "--checks", "causal"]
        + ["--option", "causal.no_such=1", "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr.strip()
    assert "\n" not in message and "Traceback" not in message  # one paragraph
    assert "'causal.no_such'" in message and "causal.max_change" in message and "max_len" in message
    assert not (marking_model / "marker.txt").exists() and not out.exists()


def test_cli_option_values_are_converted_to_the_declared_type(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tbkit", "run", "--checks", "speed", "--option", "speed.min_timings=many"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "speed.min_timings must be an int" in proc.stderr, proc.stderr
    assert not (tmp_path / "tbkit-report").exists()


def test_cli_convention_flags_are_the_declared_run_options(tmp_path):
    """--layout / --mask-convention / --max-len are spellings of the run options the convention
    measurement reads: they reach report.json under their canonical names; a value outside the
    declared choices, or the same option given twice, is a usage error (exit 2)."""
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "tbkit", "run", "--checks", "summary", "--layout", "batch_first"]
        + ["--mask-convention", "int-keep", "--max-len", "64", "--out", str(out), "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    options = json.loads((out / "report.json").read_text())["run"]["options"]
    assert options == {"layout": "batch_first", "mask_convention": "int-keep", "max_len": 64}
    twice = subprocess.run(
        [sys.executable, "-m", "tbkit", "run", "--checks", "summary", "--max-len", "64", "--option", "max_len=32"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert twice.returncode == 2 and "given twice" in twice.stderr, twice.stderr
    wrong = subprocess.run(
        [sys.executable, "-m", "tbkit", "run", "--checks", "summary", "--option", "layout=sideways"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert wrong.returncode == 2 and "batch_first" in wrong.stderr and "Traceback" not in wrong.stderr, wrong.stderr


def test_python_unknown_option_raises_before_model_code_runs_or_anything_is_written(tmp_path, marking_model):
    out = tmp_path / "report"
    with pytest.raises(UsageError) as err:
        tbkit.run(
            str(marking_model / "model.py"),
            checks=["causal"],
            options={"causal.no_such": 1},
            out_dir=out,
            progress=False,
        )
    assert "'causal.no_such'" in str(err.value) and "causal.max_change" in str(err.value)
    assert not (marking_model / "marker.txt").exists() and not out.exists()


def test_an_option_of_a_check_not_in_the_run_is_named_as_such():
    with pytest.raises(UsageError, match="'hpo.trials' belongs to check 'hpo', which this run does not include"):
        validate_options({"hpo_trials": 3}, ["causal"])


@pytest.mark.parametrize(
    "options, wanted",
    [
        ({"causal.max_change": "big"}, "must be a number"),
        ({"speed.min_timings": 2.5}, "must be an int"),
        ({"speed.min_timings": True}, "must be an int"),
        ({"synthetic": "yes"}, "must be True or False"),
        ({"max_len": 0}, "must be a number > 0"),
        ({"layout": "sideways"}, "must be one of 'batch_first', 'seq_first'"),
        ({"mask_convention": "keep"}, "must be one of 'int-keep'"),
    ],
)
def test_values_of_the_wrong_type_are_usage_errors(options, wanted):
    ids = ["causal", "speed"]
    with pytest.raises(UsageError) as err:
        validate_options(options, ids)
    assert wanted in str(err.value)


def test_declared_values_pass_under_their_canonical_names():
    given = {"causal.max_change": 1, "layout": "seq_first", "mask_convention": "additive", "max_len": 64}
    assert validate_options(given, ["causal"]) == given
    assert validate_options({"speed.latency_budget_ms": None}, ["speed"]) == {}  # None: the default holds


def test_older_flat_names_are_aliases_of_the_canonical_names():
    assert validate_options(
        {"memory_budget_mb": 5, "speed_seconds_per_point": 0.0, "latency_budget_ms": 9}, ["memory", "speed"]
    ) == {"memory.budget_mb": 5, "speed.seconds_per_shape": 0.0, "speed.latency_budget_ms": 9}
    assert validate_options({"memory_budget_mb": 5, "memory.budget_mb": 5}, ["memory"]) == {"memory.budget_mb": 5}
    with pytest.raises(UsageError, match="'memory.budget_mb' was given twice"):
        validate_options({"memory_budget_mb": 5, "memory.budget_mb": 6}, ["memory"])


def test_a_threshold_override_changes_the_verdict_and_the_report_shows_canonical_names(tmp_path):
    lm = M.loaded(M.build(M.HealthyDecoder))
    tight = tbkit.run(lm, checks="memory", out_dir=tmp_path / "a", progress=False, options={"memory_budget_mb": 0.01})
    roomy = tbkit.run(lm, checks="memory", out_dir=tmp_path / "b", progress=False, options={"memory.budget_mb": 1e4})
    assert tight.verdict.value == "FAIL" and roomy.verdict.value == "PASS"
    run = json.loads((tmp_path / "a" / "report.json").read_text())["run"]
    assert run["options"] == {"memory.budget_mb": 0.01}


def _capacity_line(options: dict) -> float:
    ctx = CheckContext(model=M.loaded(M.build(M.HealthyDecoder)), device=torch.device("cpu"), options=options)
    ctx.check_id, ctx.tier, ctx.defer_figures = "capacity", 2, True
    rows = list(capacity.check_capacity(ctx))
    assert rows
    (figure,) = ctx.figures
    fig = figure.figure if figure.figure is not None else figure.draw()
    (line,) = [ln for ln in fig.axes[0].lines if ln.get_linestyle() == "--"]  # the weights' threshold line
    return float(line.get_xdata()[0])


def test_the_capacity_plot_draws_the_threshold_in_force():
    assert _capacity_line({}) == pytest.approx(0.1)
    assert _capacity_line({"capacity.min_erank_ratio": 0.6}) == pytest.approx(0.6)
