"""The report: DataFrame columns, verdict from rows, report.json schema, a self-contained HTML
with the plots embedded, and the PNG files."""

from __future__ import annotations

import base64
import json
import re

import pytest

import models as M
import tbkit
from tbkit.checks.base import Row, Status
from tbkit.checks.numeric import log_scale, new_figure
from tbkit.checks.report import COLUMNS, SCHEMA_VERSION, Report, load_json

# platform-independent: also run against each built wheel by the release workflow (-m quick)
pytestmark = pytest.mark.quick

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    report = tbkit.run(
        M.loaded(M.build(M.HealthyDecoder)), out_dir=out, progress=False, options={"speed_seconds_per_point": 0.02}
    )
    return report, out


def test_dataframe_has_the_public_columns_and_one_row_per_result(full_run):
    report, _ = full_run
    df = report.df
    assert list(df.columns) == COLUMNS
    assert len(df) == len(report.rows)
    assert set(df["status"]) <= {"PASS", "WARN", "SKIP"}
    assert (df["seconds"] >= 0).all() and df["seconds"].sum() > 0
    assert set(df["check"]) == {
        "summary",
        "conventions",
        "shape",
        "batch_equivalence",
        "causal",
        "padding",
        "stability",
        "determinism",
        "init",
        "gradient_flow",
        "memory",
        "speed",
    }


def test_report_json_schema(full_run):
    report, out = full_run
    data = load_json(out / "report.json")
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["tbkit_version"] == tbkit.__version__
    assert data["finished"] is True and data["interrupted"] is False
    assert data["verdict"] == report.verdict.value
    assert sum(data["counts"].values()) == len(data["rows"]) == len(report.rows)
    model = data["model"]
    assert (model["kind"], model["vocab_size"], model["max_len"]) == ("decoder", M.VOCAB, M.MAX_LEN)
    assert model["provenance"]["source"] == "module" and "models:HealthyDecoder" in model["provenance_text"]
    env = data["environment"]
    for key in ("python", "platform", "torch", "device", "dtype", "cuda_name"):
        assert key in env
    assert env["device"] == "cpu" and env["dtype"] == "float32"
    assert set(data["rows"][0]) == set(COLUMNS)
    assert data["run"]["seed"] == 0 and data["run"]["tiers"] == [1]
    # the conventions are measured before any check, so no row holds that time: the run says it
    assert 0 < data["run"]["conventions_seconds"] < sum(r["seconds"] for r in data["rows"])


def test_plots_are_png_files_and_embedded_in_the_html(full_run):
    report, out = full_run
    names = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert names == [
        "gradient_flow_gradient_norms.png",
        "memory_memory_sweep.png",
        "speed_speed_sweep.png",
        "stability_output_distribution.png",
    ]
    for p in (out / "plots").glob("*.png"):
        assert p.read_bytes().startswith(PNG_MAGIC)
    html = (out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 4
    assert all(base64.b64decode(i).startswith(PNG_MAGIC) for i in images)
    # self-contained: nothing fetched from elsewhere
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert f"tbkit verdict: {report.verdict.value}" in html
    assert "models:HealthyDecoder" in html  # provenance


@pytest.mark.parametrize(
    ("values", "minor_ticks"), [([1e-4, 3e-3, 0.5], False), ([0.2, 0.35, 0.8], True), ([0.0, 1.0], False)]
)
def test_log_axes_have_plain_labels_and_minor_ticks_only_within_two_decades(values, minor_ticks):
    """The plots' log axes (stability, gradient_flow) skip matplotlib's TeX-typeset labels and its
    8 minor ticks a decade, the slow parts of drawing them, yet a narrow range still gets labels."""
    fig = new_figure()
    ax = fig.add_subplot()
    ax.barh(range(len(values)), [max(v, 1e-30) for v in values])
    log_scale(ax, "x", values)
    fig.canvas.draw()  # ticks and labels are made at draw time
    assert ax.get_xscale() == "log"
    labels = [t.get_text() for t in ax.xaxis.get_ticklabels() + ax.xaxis.get_ticklabels(minor=True)]
    assert any(labels) and not any("$" in text for text in labels)  # no mathtext
    assert bool(ax.xaxis.get_minorticklocs().size) == minor_ticks


def test_html_rows_are_coloured_by_status_and_escaped():
    report = Report(M.loaded(M.build(M.HealthyDecoder)), None, {"python": "x"}, {})
    report.add(Row(1, "causal", Status.FAIL, "m", 0.5, "<= 1e-6", "t < s moved <script>"))
    report.add(Row(1, "speed", Status.WARN, "m", 1.0))
    report.add(Row(1, "summary", Status.PASS, "m", 1))
    report.add(Row(1, "init", Status.SKIP, "m", None, "", "hidden states"))
    html = report._repr_html_()
    for status, colour in (("FAIL", "#f8d7da"), ("WARN", "#fff3cd"), ("PASS", "#d4edda"), ("SKIP", "#e2e3e5")):
        assert f'<tr style="background:{colour}"><td>1</td><td>' in html, status
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "tbkit verdict: FAIL" in html


def test_verdict_comes_from_the_rows():
    report = Report(M.loaded(M.build(M.HealthyDecoder)), None, {}, {})
    assert report.verdict is Status.PASS  # no rows: nothing failed (the CLI shows the counts)
    report.add(Row(1, "a", Status.SKIP))
    assert report.verdict is Status.PASS
    report.add(Row(1, "b", Status.WARN))
    assert report.verdict is Status.WARN
    report.add(Row(1, "c", Status.ERROR, detail="Traceback ...\nValueError: x"))
    assert report.verdict is Status.FAIL
    assert "ERROR c: : ValueError: x" in report.summary_text()


def test_non_finite_values_survive_as_text_in_json(tmp_path):
    report = Report(M.loaded(M.build(M.HealthyDecoder)), tmp_path, {}, {})
    report.add(Row(1, "stability", Status.FAIL, "max |output|", float("nan")))
    data = json.loads((tmp_path / "report.json").read_text())  # strict JSON parser: no bare NaN
    assert data["rows"][0]["value"] == "nan"


def test_summary_text_lists_problem_rows_and_the_report_path(tmp_path):
    report = tbkit.run(M.loaded(M.build(M.LeakyMaskDecoder)), checks="causal,summary", out_dir=tmp_path, progress=False)
    text = report.summary_text()
    assert text.startswith("verdict: FAIL (")
    assert text.count("FAIL  causal:") == 3
    assert str(tmp_path / "report.html") in text


def test_dataframe_display_is_coloured_by_status_and_stays_a_dataframe(tmp_path):
    import pandas as pd

    report = tbkit.run(M.loaded(M.build(M.LeakyMaskDecoder)), checks="causal,summary", out_dir=tmp_path, progress=False)
    df = report.df
    assert isinstance(df, pd.DataFrame)
    failing = df[df["status"] == "FAIL"]
    assert len(failing) == 3 and '<tr style="background:#f8d7da">' in failing._repr_html_()
    assert '<tr style="background:#d4edda">' in df._repr_html_()
    assert df.groupby("status").size().to_dict() == {"FAIL": 3, "PASS": 4}


def test_a_plot_interrupted_while_it_is_written_leaves_no_partial_file(tmp_path):
    """Figures are drawn after the checks; Ctrl-C in the middle of writing one leaves no PNG and
    no temporary file behind (a PNG appears whole or not at all)."""
    from pathlib import Path

    from tbkit.checks.base import Figure

    class Interrupted:
        def savefig(self, path, **kwargs):
            Path(path).write_bytes(b"\x89PNG half")
            raise KeyboardInterrupt

    target = tmp_path / "plots" / "speed_sweep.png"
    fig = Figure("speed", "speed_sweep", target, draw=Interrupted)
    assert fig.pending
    with pytest.raises(KeyboardInterrupt):
        fig.render()
    assert not target.exists() and list((tmp_path / "plots").iterdir()) == []
