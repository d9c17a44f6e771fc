"""The typed boundary of the compiled probe: frozen findings and reports, severities checked,
named exceptions, and a `.pyi` that mirrors what the extension really exports."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tbkit import _probe
from tbkit.guard import integrity

ROOT = Path(__file__).resolve().parents[2]
STUB = ROOT / "python" / "tbkit" / "_probe.pyi"


def _finding(severity: str = "restart_required") -> _probe.Finding:
    return _probe.Finding("numpy", "2.0.2", "2.2.6", "mapped files deleted", ["/sp/numpy/x.so"], severity)


def test_findings_are_frozen_typed_objects():
    f = _finding()
    assert (f.distribution, f.loaded_version, f.disk_version, f.severity) == (
        "numpy",
        "2.0.2",
        "2.2.6",
        "restart_required",
    )
    assert f.paths == ["/sp/numpy/x.so"]
    with pytest.raises(AttributeError):
        f.severity = "benign"
    assert f == _finding() and f != _finding("benign")
    assert f.to_dict() == {
        "distribution": "numpy",
        "loaded_version": "2.0.2",
        "disk_version": "2.2.6",
        "change": "mapped files deleted",
        "paths": ["/sp/numpy/x.so"],
        "severity": "restart_required",
    }
    assert str(f) == "numpy 2.0.2 (on disk: 2.2.6): mapped files deleted [restart_required]"
    assert repr(f).startswith("Finding(distribution=")
    with pytest.raises(ValueError, match="unknown severity"):
        _probe.Finding("x", None, None, "c", [], "restart-required")
    assert tuple(_probe.SEVERITIES) == integrity.SEVERITIES


def test_a_check_returns_a_frozen_report_of_findings():
    raw = integrity.new_probe().check()
    assert isinstance(raw, _probe.Report)
    assert isinstance(raw.findings, tuple) and isinstance(raw.notes, tuple)
    with pytest.raises(AttributeError):
        raw.findings = ()


def test_report_filters_by_severity_replace_hand_filters():
    report = integrity.IntegrityReport(findings=[_finding(), _finding("preexisting"), _finding("benign")], notes=["n"])
    assert report.restart_findings == [_finding()]
    assert report.preexisting_findings == [_finding("preexisting")]
    assert report.restart_required
    calm = integrity.IntegrityReport(findings=[_finding("preexisting"), _finding("benign")])
    assert not calm.restart_required and calm.restart_findings == []
    assert "leftovers from before this process" in calm.headline()


def test_named_exceptions(tmp_path):
    assert issubclass(_probe.UnreadableFileError, _probe.ProbeError)
    with pytest.raises(_probe.UnreadableFileError, match="cannot read"):
        _probe.build_id(str(tmp_path))  # a directory cannot be read as a file
    assert issubclass(integrity.ProbeUnavailableError, RuntimeError)  # what callers caught before
    assert issubclass(integrity.ProbeUnavailableError, _probe.ProbeError)


def test_the_compiled_classes_and_exceptions_are_named_under_tbkit_probe():
    for cls in (_probe.ProbeError, _probe.UnreadableFileError, _probe.Finding, _probe.Report, _probe.Probe):
        assert cls.__module__ == "tbkit._probe", cls
    assert repr(_probe.ProbeError) == "<class 'tbkit._probe.ProbeError'>"


def test_findings_hash_by_value_so_they_can_be_set_members_and_keys():
    assert hash(_finding()) == hash(_finding())
    assert {_finding(), _finding(), _finding("benign")} == {_finding(), _finding("benign")}
    assert {_finding(): "seen"}[_finding()] == "seen"


def test_the_stub_mirrors_the_compiled_module():
    tree = ast.parse(STUB.read_text())
    stub_names = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    stub_names |= {
        t.id for n in tree.body if isinstance(n, ast.AnnAssign) for t in [n.target] if isinstance(t, ast.Name)
    }
    public = {n for n in dir(_probe) if not n.startswith("_")} | {"__version__"}
    assert public == stub_names - {"_Severity"}
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    for name in ("Finding", "Report", "Probe"):
        declared = {f.name for f in classes[name].body if isinstance(f, ast.FunctionDef)}
        real = {a for a in dir(getattr(_probe, name)) if not a.startswith("_")}
        assert real <= declared, (name, real - declared)
    assert (ROOT / "python" / "tbkit" / "py.typed").exists()


def test_integrity_is_clean_under_mypy_strict():
    pytest.importorskip("mypy")
    env = dict(os.environ, MYPYPATH=str(ROOT / "python"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",  # incremental: the test command's own mypy step has warmed the cache (51 s -> 2 s)
            str(ROOT / "python/tbkit/guard/integrity.py"),
            str(STUB),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
