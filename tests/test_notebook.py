"""The template notebook: well-formed (the predecessor's cells ran as single comment lines), free of
anything that blocks Run-all, and executed top to bottom by a real Jupyter kernel against a wheel
built from this checkout, installed into a fresh venv."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BLOCKING = ("input(", "getpass", "files.upload", "drive.mount", "FileUpload(")


def _cells(path: Path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    return nb["cells"]


def test_there_is_a_template_notebook():
    assert [p.name for p in NOTEBOOKS] == ["tbkit_template.ipynb"]


@pytest.mark.quick
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_source_line_ends_with_a_newline(path):
    for i, cell in enumerate(_cells(path)):
        src = cell["source"]
        assert isinstance(src, list) and src, f"cell {i} has no source lines"
        assert len(src) > 1 or cell["cell_type"] == "markdown", f"cell {i} is one line: {src!r}"
        missing = [line for line in src[:-1] if not line.endswith("\n")]
        assert not missing, f"cell {i}: lines without newline would run as one line: {missing}"


@pytest.mark.quick
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_code_cell_parses_and_needs_no_human(path):
    from IPython.core.inputtransformer2 import TransformerManager

    transform = TransformerManager().transform_cell
    code_cells = [c for c in _cells(path) if c["cell_type"] == "code"]
    assert len(code_cells) >= 5
    for i, cell in enumerate(code_cells):
        source = "".join(cell["source"])
        ast.parse(transform(source), filename=f"{path.name}[code cell {i}]")  # magics become calls
        for bad in BLOCKING:
            assert bad not in source, f"code cell {i} would block Run-all: {bad}"
        assert not cell.get("outputs"), f"code cell {i} was saved with outputs"


@pytest.mark.quick
def test_the_flow_is_install_extension_model_tiers():
    code = ["".join(c["source"]) for c in _cells(NOTEBOOKS[0]) if c["cell_type"] == "code"]
    assert "%pip install" in code[0] and "--no-deps" in code[0]
    assert "%load_ext tbkit" in code[1]
    assert '#@param {type:"string"}' in code[2] and "tbkit.load(" in code[2]
    assert "tiers=(1,)" in code[3] and "report.verdict" in code[3]
    assert "tiers=(2,)" in code[4] and "tiers=(3,)" in code[5]


@pytest.mark.slow
def test_run_all_in_a_real_kernel_against_the_built_wheel(tmp_path, tbkit_wheel, monkeypatch):
    """Run-all with nbclient in a kernel whose Python is a fresh venv.

    The venv sees the machine's torch/numpy/pandas/matplotlib/captum/lightning/optuna through
    --system-site-packages (torch is several GB: installed once per machine, as in Colab, where it
    is preinstalled); tbkit itself comes from the notebook's own first cell, `%pip install
    --no-deps` of the wheel built from this checkout."""
    import nbformat
    from nbclient import NotebookClient

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    kernels = tmp_path / "jupyter" / "kernels" / "tbkit-venv"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "tbkit test venv",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("TBKIT_SPEC", str(tbkit_wheel))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)  # reports land in tmp_path/tbkit-report

    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import tbkit\nprint('TBKIT_FROM', tbkit.__file__)\n"))
    client = NotebookClient(
        nb, kernel_name="tbkit-venv", timeout=900, allow_errors=False, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert f"TBKIT_FROM {venv}" in text, "the kernel must run the wheel installed into the venv"
    for tier in (1, 2, 3):
        line = next((ln for ln in text.splitlines() if ln.startswith(f"Tier {tier} verdict:")), None)
        assert line is not None, f"no Tier {tier} verdict printed"
    assert any(
        ln.startswith("Tier 1 verdict: ") and ln.split(": ")[1] in ("PASS", "WARN") for ln in text.splitlines()
    ), "the bundled example must pass Tier 1"
    report = json.loads((tmp_path / "tbkit-report" / "tier1" / "report.json").read_text())
    assert report["verdict"] in ("PASS", "WARN")
    assert (tmp_path / "tbkit-report" / "tier1" / "report.html").is_file()
