"""The template notebook: well-formed (the predecessor's cells ran as single comment lines), free of
anything that blocks Run-all, and executed top to bottom by a real Jupyter kernel against a wheel
built from this checkout, installed into a fresh venv."""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

import pytest

from fresh_venv import fresh_venv, venv_over_tests

ROOT = Path(__file__).resolve().parents[2]
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


@pytest.mark.quick
def test_later_cells_stop_with_one_message_when_the_install_failed():
    code = [c for c in _cells(NOTEBOOKS[0]) if c["cell_type"] == "code"]
    assert "TBKIT_PROBLEM = " in "".join(code[0]["source"])
    for i, cell in enumerate(code[1:], start=1):
        title, guard, body = cell["source"][0], cell["source"][1], "".join(cell["source"][2:])
        assert title.startswith("#@title") and guard.startswith("if TBKIT_PROBLEM:"), f"code cell {i}"
        assert body.lstrip().startswith("raise RuntimeError(TBKIT_PROBLEM)"), f"code cell {i}"


def _venv_kernel(tmp_path: Path, monkeypatch) -> Path:
    """A kernel named `tbkit-venv` whose Python is a fresh venv; returns the venv.

    The venv sees the machine's torch/numpy/pandas/matplotlib/captum/lightning/optuna as through
    --system-site-packages (torch is several GB: installed once per machine, as in Colab, where it
    is preinstalled); tbkit itself comes only from the notebook's own first cell."""
    venv = tmp_path / "venv"
    _kernel(venv_over_tests(venv), tmp_path, monkeypatch)
    return venv


def _kernel(python: Path, tmp_path: Path, monkeypatch) -> None:
    """Register ``python`` as the kernel `tbkit-venv`, in the environment Colab's notebook would see."""
    kernels = tmp_path / "jupyter" / "kernels" / "tbkit-venv"
    kernels.mkdir(parents=True)
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (kernels / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "tbkit venv", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the kernel must import the installed tbkit, not a checkout
    monkeypatch.delenv("TBKIT_SPEC", raising=False)  # as in Colab: the notebook's own pin
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)  # only the index below
    monkeypatch.chdir(tmp_path)  # reports land in tmp_path/tbkit-report


def _execute(nb, tmp_path: Path, allow_errors: bool = False):
    from nbclient import NotebookClient

    client = NotebookClient(
        nb,
        kernel_name="tbkit-venv",
        timeout=900,
        allow_errors=allow_errors,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    return [c for c in nb.cells if c.cell_type == "code"]


def _text(cells) -> str:
    return "\n".join(o.get("text", "") for c in cells for o in c.get("outputs", []) if o.get("output_type") == "stream")


def _installed(venv: Path) -> list:
    site = next((venv / "lib").glob("python*/site-packages"))
    return sorted(p.name for p in site.glob("*.dist-info"))


@pytest.mark.slow
def test_run_all_installs_tbkit_ml_from_a_package_index_that_also_has_a_decoy(tmp_path, tbkit_wheel, monkeypatch):
    """Colab's way, without the override: `%pip install tbkit-ml==VERSION` against a PEP 503 index on
    127.0.0.1 that also serves `tbkit` 9.9.9 (PyPI's `tbkit` is an unrelated project). The notebook
    must install tbkit-ml, never the decoy, and run top to bottom."""
    import nbformat

    from decoy import CLOBBERING, build_wheel
    from simple_index import SimpleIndex

    decoy = build_wheel(tmp_path / "decoy", "tbkit", "9.9.9", CLOBBERING)
    venv = _venv_kernel(tmp_path, monkeypatch)
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import tbkit\nprint('TBKIT_FROM', tbkit.__file__)\n"))
    with SimpleIndex(tmp_path / "index", [tbkit_wheel, decoy]) as index:
        monkeypatch.setenv("PIP_INDEX_URL", index.url)
        cells = _execute(nb, tmp_path)

    assert not [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    text = _text(cells)
    assert f"TBKIT_FROM {venv}" in text, "the kernel must run the wheel installed into the venv"
    installed = _installed(venv)
    assert [d for d in installed if d.startswith("tbkit")] == [tbkit_wheel.name.split("-cp")[0] + ".dist-info"]
    assert "also installs files into the `tbkit` package" not in text
    for tier in (1, 2, 3):
        line = next((ln for ln in text.splitlines() if ln.startswith(f"Tier {tier} verdict:")), None)
        assert line is not None, f"no Tier {tier} verdict printed"
    assert any(
        ln.startswith("Tier 1 verdict: ") and ln.split(": ")[1] in ("PASS", "WARN") for ln in text.splitlines()
    ), "the bundled example must pass Tier 1"
    report = json.loads((tmp_path / "tbkit-report" / "tier1" / "report.json").read_text())
    assert report["verdict"] in ("PASS", "WARN")
    assert (tmp_path / "tbkit-report" / "tier1" / "report.html").is_file()


@pytest.mark.slow
def test_when_the_install_fails_cell_1_says_what_to_do_and_later_cells_stop(tmp_path, monkeypatch):
    """Offline, or the version not published yet: an index without tbkit-ml. One paragraph under
    cell 1; every later cell stops with that message, never a NameError."""
    import nbformat

    from decoy import CLOBBERING, build_wheel
    from simple_index import SimpleIndex

    decoy = build_wheel(tmp_path / "decoy", "tbkit", "9.9.9", CLOBBERING)
    _venv_kernel(tmp_path, monkeypatch)
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    with SimpleIndex(tmp_path / "index", [decoy]) as index:
        monkeypatch.setenv("PIP_INDEX_URL", index.url)
        cells = _execute(nb, tmp_path, allow_errors=True)

    first = _text(cells[:1])
    advice = [ln for ln in first.splitlines() if ln.startswith("tbkit is not installed")]
    assert len(advice) == 1, first
    assert "/releases/download/v" in advice[0] and "git+" in advice[0] and "TBKIT_SPEC" in advice[0]
    for i, cell in enumerate(cells[1:], start=1):
        (error,) = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        assert error["ename"] == "RuntimeError" and error["evalue"] == advice[0], f"code cell {i}: {error['ename']}"


@pytest.mark.slow
def test_install_cell_names_a_decoy_already_installed_and_restores_tbkit(tmp_path, tbkit_wheel, monkeypatch):
    """The decoy was installed over tbkit before the notebook ran and replaced tbkit/__init__.py. The
    install cell's --force-reinstall restores tbkit's files, names the decoy and says how to remove it;
    the extension then loads."""
    import nbformat

    from decoy import CLOBBERING, build_wheel
    from simple_index import SimpleIndex

    decoy = build_wheel(tmp_path / "decoy", "tbkit", "9.9.9", CLOBBERING)
    venv = _venv_kernel(tmp_path, monkeypatch)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
    subprocess.run([*pip, str(tbkit_wheel)], check=True)
    subprocess.run([*pip, str(decoy)], check=True)
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    nb.cells = nb.cells[:3] + [
        nbformat.v4.new_code_cell("import tbkit\nprint('EXTENSION', hasattr(tbkit, 'load_ipython_extension'))\n")
    ]
    with SimpleIndex(tmp_path / "index", [tbkit_wheel, decoy]) as index:
        monkeypatch.setenv("PIP_INDEX_URL", index.url)
        cells = _execute(nb, tmp_path)

    text = _text(cells)
    (warning,) = [ln for ln in text.splitlines() if "also installs files into the `tbkit` package" in ln]
    assert warning.startswith("Warning: tbkit also installs") and "%pip uninstall -y tbkit" in warning
    assert "EXTENSION True" in text


def _bare_kernel(tmp_path: Path, monkeypatch) -> tuple:
    """A kernel holding only ipykernel, torch and numpy (tests/support/fresh_venv.py); (python, view)."""
    python = fresh_venv(tmp_path / "venv")
    _kernel(python, tmp_path, monkeypatch)
    return python, tmp_path / "venv-shared-view"


def _own_dists(python: Path) -> set:
    """Distributions installed into the venv itself (not those it sees through the shared view)."""
    site = next((python.parent.parent / "lib").glob("python*/site-packages"))
    return {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}


def _served(tbkit_wheel: Path, tmp_path: Path, leave_out: tuple = ()) -> list:
    """tbkit-ml, its requirements but torch and numpy from the wheelhouse, and the decoy `tbkit`."""
    import wheelhouse as wh
    from decoy import CLOBBERING, build_wheel

    deps = [wh.wheel_of(r) for r in wh.NOTEBOOK_DEPS if r.split("==")[0] not in leave_out]
    return [tbkit_wheel, build_wheel(tmp_path / "decoy", "tbkit", "9.9.9", CLOBBERING), *deps]


@pytest.mark.slow
def test_run_all_in_a_bare_kernel_installs_only_what_is_missing(tmp_path, tbkit_wheel, wheelhouse, monkeypatch):
    """A local kernel with only ipykernel, torch and numpy: cell 1 installs tbkit-ml, then pandas,
    matplotlib, tqdm (and what they need) through the gate from an index on 127.0.0.1 that also serves
    the decoy; nothing the kernel has is replaced, the decoy never lands, and every cell succeeds."""
    import nbformat

    from simple_index import SimpleIndex

    python, view = _bare_kernel(tmp_path, monkeypatch)
    shared = sorted(p.name for p in view.iterdir())
    assert "pandas" not in shared and "tqdm" not in shared and "torch" in shared
    before = _own_dists(python)
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    with SimpleIndex(tmp_path / "index", _served(tbkit_wheel, tmp_path)) as index:
        monkeypatch.setenv("PIP_INDEX_URL", index.url)
        cells = _execute(nb, tmp_path)

    assert not [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    first = _text(cells[:1])
    assert "tbkit: installing exactly the plan" in first, first
    assert "not ready" not in first, first
    added = _own_dists(python) - before
    assert {"tbkit_ml", "pandas", "matplotlib", "tqdm"} <= added, added
    assert "tbkit" not in added, "the decoy must never be installed"
    # nothing the kernel already had was installed again beside it (numpy, torch, ipykernel's stack)
    assert not added & {p.split("-")[0].lower() for p in shared if p.endswith(".dist-info")}, added
    assert sorted(p.name for p in view.iterdir()) == shared and all(p.exists() for p in view.iterdir())
    text = _text(cells)
    for tier in (1, 2, 3):
        assert any(ln.startswith(f"Tier {tier} verdict:") for ln in text.splitlines()), f"no Tier {tier} verdict"


@pytest.mark.slow
def test_a_requirement_the_index_cannot_serve_ends_cell_1_with_one_paragraph(tmp_path, tbkit_wheel, monkeypatch):
    """pandas is missing and the index has no pandas: cell 1 ends with one paragraph (why, what to do),
    no traceback; every later cell stops with that paragraph as a "not ready" error."""
    import nbformat

    from simple_index import SimpleIndex

    _bare_kernel(tmp_path, monkeypatch)
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    with SimpleIndex(tmp_path / "index", _served(tbkit_wheel, tmp_path, leave_out=("pandas",))) as index:
        monkeypatch.setenv("PIP_INDEX_URL", index.url)
        cells = _execute(nb, tmp_path, allow_errors=True)

    assert not [o for o in cells[0].get("outputs", []) if o.get("output_type") == "error"]
    first = _text(cells[:1])
    assert "Traceback" not in first, first
    (paragraph,) = [ln for ln in first.splitlines() if ln.startswith("tbkit is not ready:")]
    assert first.rstrip().endswith(paragraph) and "pandas" in paragraph, first
    for i, cell in enumerate(cells[1:], start=1):
        (error,) = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        assert error["ename"] == "RuntimeError" and error["evalue"] == paragraph, f"code cell {i}: {error}"
