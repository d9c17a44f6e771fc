"""tbkit.ensure_requirements(): the core requirements read from the installed metadata, the missing ones
found without importing anything and installed through the gate; whatever goes wrong ends as one
paragraph (why, what to do), never an exception. The notebook runs of the same code are in
tests/notebook/test_template_notebook.py."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import tbkit
from tbkit.guard import dependencies
from tiny_wheels import make_wheel

ROOT = Path(__file__).resolve().parents[2]


def test_the_core_requirements_are_read_from_the_installed_metadata():
    pyproject = (ROOT / "pyproject.toml").read_text()
    declared = ast.literal_eval(re.search(r"^dependencies = (\[.*?\])$", pyproject, re.M).group(1))
    assert dependencies.core_requirements() == tuple(declared)  # extras (captum, lightning) are not core


def test_a_ready_environment_installs_nothing(capsys):
    ready = tbkit.ensure_requirements()
    assert ready.ready and not ready.missing and not ready.installed
    assert capsys.readouterr().out == ""


def test_importing_tbkit_and_the_check_import_nothing_heavy():
    code = "import sys, tbkit; tbkit.ensure_requirements(quiet=True); print(sorted({'torch', 'pandas', 'matplotlib', 'tqdm', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """An installed distribution `tbkit-fake` that requires a package nobody has."""
    wheel = make_wheel(
        tmp_path / "w", "tbkit-fake", "1.0", requires=["tbkit-no-such-dep", 'colorama; sys_platform == "win32"']
    )
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    monkeypatch.syspath_prepend(str(site))
    return "tbkit-fake"


def test_a_requirement_the_index_cannot_serve_is_one_printed_paragraph(fake_dist, tmp_path, monkeypatch, capsys):
    from simple_index import SimpleIndex

    unrelated = make_wheel(tmp_path / "u", "unrelated", "1.0")
    with SimpleIndex(tmp_path / "index", [unrelated]) as index:
        monkeypatch.setenv("PIP_INDEX_URL", index.url)
        monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
        ready = tbkit.ensure_requirements(distribution=fake_dist)

    assert ready.required == ("tbkit-no-such-dep",) and ready.missing == ("tbkit-no-such-dep",)
    assert not ready.ready and "\n" not in ready.problem
    assert ready.problem.startswith("tbkit is not ready: tbkit-no-such-dep is missing from this Python")
    assert capsys.readouterr().out.rstrip().endswith(ready.problem)


def test_missing_torch_is_the_install_line_not_an_install(fake_dist, monkeypatch, capsys):
    monkeypatch.setattr(dependencies, "missing_requirements", lambda required: ("torch",))
    ready = tbkit.ensure_requirements(distribution=fake_dist)
    assert not ready.installed
    assert ready.problem.startswith("tbkit is not ready: torch is not installed in this Python")
    assert "pip install torch" in ready.problem and "several GB" in ready.problem
    assert capsys.readouterr().out.strip() == ready.problem


def test_require_ready_names_what_is_missing_and_what_to_run(fake_dist):
    with pytest.raises(tbkit.NotReady) as info:
        dependencies.require_ready(fake_dist)
    assert "tbkit-no-such-dep is not installed" in str(info.value)
    assert "tbkit.ensure_requirements()" in str(info.value)
