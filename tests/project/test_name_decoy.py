"""The distribution is `tbkit-ml`; PyPI's `tbkit` is an unrelated project that also installs a
top-level `tbkit` package. When such a decoy is installed over the real tbkit, `import tbkit` warns in
one line and `tbkit doctor` names the other distribution and the exact commands that remove it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from decoy import ADDING, CLOBBERING, build_wheel
from fresh_venv import venv_over_tests
from project_version import cargo_version

ROOT = Path(__file__).resolve().parents[2]
PIP = ["-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check", "--no-index"]


def test_the_distribution_name_is_tbkit_ml_everywhere():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '\nname = "tbkit-ml"\n' in pyproject
    assert 'tbkit = "tbkit.cli:main"' in pyproject  # the command keeps the import name
    notebook = (ROOT / "notebooks" / "tbkit_template.ipynb").read_text()
    assert '\\"tbkit-ml==' in notebook
    for path in ("scripts/test.sh", "tests/conftest.py", ".github/workflows/release.yml"):
        text = (ROOT / path).read_text()
        assert "tbkit_ml-*" in text, path
        assert "tbkit-*.whl" not in text, path
    readme = (ROOT / "README.md").read_text()
    assert "%pip install --no-deps tbkit-ml==" in readme
    assert "pip index versions tbkit-ml" in (ROOT / "docs" / "release.md").read_text()


@pytest.fixture
def venv_with_tbkit(tmp_path, tbkit_wheel) -> Path:
    """A venv (torch & co. from the system site) with the real wheel installed."""
    venv = tmp_path / "venv"
    venv_over_tests(venv)
    subprocess.run([str(venv / "bin" / "python"), *PIP, str(tbkit_wheel)], check=True)
    return venv


def _decoy(tmp_path, files) -> Path:
    return build_wheel(tmp_path / "decoy", "tbkit", "9.9.9", files)


def _run(venv: Path, *args, cwd: Path):
    # No PYTHONPATH: the venv must run the installed wheel, not this checkout's python/.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], capture_output=True, text=True, cwd=cwd, env=env)


@pytest.mark.slow
def test_doctor_names_a_decoy_that_adds_files_and_its_advice_fixes_it(tmp_path, venv_with_tbkit, tbkit_wheel):
    venv = venv_with_tbkit
    assert "Warning" not in _run(venv, "python", "-W", "always", "-c", "import tbkit", cwd=tmp_path).stderr
    subprocess.run([str(venv / "bin" / "python"), *PIP, str(_decoy(tmp_path, ADDING))], check=True)

    imported = _run(venv, "python", "-c", "import tbkit", cwd=tmp_path)
    assert imported.returncode == 0
    (warning,) = [ln for ln in imported.stderr.splitlines() if "RuntimeWarning" in ln]
    assert "tbkit 9.9.9" in warning and "tbkit doctor" in warning

    doctor = _run(venv, "tbkit", "doctor", cwd=tmp_path)
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    assert "CONFLICT" in doctor.stdout and "`tbkit` 9.9.9" in doctor.stdout
    assert "tbkit/tightbinding.py" in doctor.stdout
    # The probe matches the module `tbkit` with the dist-info named `tbkit` (the decoy's), so today it
    # also reports a version mismatch; doctor then says where that finding comes from.
    if "(on disk: 9.9.9)" in doctor.stdout:
        assert "note: the integrity finding for `tbkit`" in doctor.stdout
    fix = [ln.strip() for ln in doctor.stdout.splitlines() if ln.startswith("    python -m pip")]
    assert fix == [
        "python -m pip uninstall -y tbkit",
        f"python -m pip install --no-deps --force-reinstall tbkit-ml=={cargo_version()}",
    ]

    # Following the advice (from the local wheel instead of the index) leaves a whole, single-owner tbkit.
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "uninstall", "-q", "-y", "tbkit"], check=True)
    subprocess.run([str(venv / "bin" / "python"), *PIP, "--force-reinstall", str(tbkit_wheel)], check=True)
    doctor = _run(venv, "tbkit", "doctor", "--json", cwd=tmp_path)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    ownership = json.loads(doctor.stdout)["ownership"]
    assert ownership["ok"] and ownership["dist_info"].startswith("tbkit_ml-")


@pytest.mark.slow
def test_a_decoy_that_replaces_init_is_named_by_doctor_though_import_tbkit_is_not_ours(tmp_path, venv_with_tbkit):
    """pip overwrites tbkit/__init__.py: `import tbkit` is now the other project (our code never runs,
    so it cannot warn), `%load_ext tbkit` would fail. The command still works, because tbkit.cli and
    the compiled probe are still ours, and doctor names the replaced file and the owner."""
    venv = venv_with_tbkit
    subprocess.run([str(venv / "bin" / "python"), *PIP, str(_decoy(tmp_path, CLOBBERING))], check=True)
    what = _run(venv, "python", "-c", "import tbkit; print(tbkit.__version__, hasattr(tbkit, 'load'))", cwd=tmp_path)
    assert what.stdout.split() == ["9.9.9", "False"], what.stderr

    assert _run(venv, "tbkit", "--version", cwd=tmp_path).stdout.strip() == f"tbkit {cargo_version()}"  # compiled in
    doctor = _run(venv, "tbkit", "doctor", "--json", cwd=tmp_path)
    assert doctor.returncode == 1, doctor.stderr
    ownership = json.loads(doctor.stdout)["ownership"]
    assert [o["name"] for o in ownership["owners"]] == ["tbkit"]
    assert ownership["changed"] == ["tbkit/__init__.py"]
    text = _run(venv, "python", "-m", "tbkit", "doctor", cwd=tmp_path).stdout
    assert "python -m pip uninstall -y tbkit" in text and "tbkit/__init__.py" in text
