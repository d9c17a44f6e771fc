"""tbkit.integrity in this process: the report API, the never-import guarantee, bad input, and the
signals on a hand-made site directory (fast; the real reinstalls are in test_probe_reinstall.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from probe_scenarios import FakeSite
from tbkit.guard import integrity


@pytest.fixture
def fake(tmp_path):
    site = FakeSite(tmp_path)
    site.load()
    yield site
    site.unload()


def _by_dist(report):
    return {f.distribution: f for f in report.findings}


def test_clean_process_reports_ok_and_the_api_shapes():
    report = integrity.check()
    assert report.ok and not report.restart_required and report.findings == []
    d = report.to_dict()
    assert set(d) >= {"ok", "restart_required", "findings", "notes"}
    json.dumps(d)
    assert "OK" in str(report)
    assert "tbkit integrity" in report._repr_html_()
    loaded = integrity.loaded_distributions()
    # pytest: surely installed and loaded here (tbkit itself may come from a checkout on PYTHONPATH,
    # which is not the installed distribution)
    assert loaded["pytest"] == pytest.__version__
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in loaded.items())


def test_check_imports_nothing_and_never_calls_module_getattr(tmp_path):
    calls = []

    def trap(name):  # PEP 562: a getattr on this module would import a module nobody imported
        calls.append(name)
        import xmlrpc.client  # noqa: F401

        raise AttributeError(name)

    lazy = types.ModuleType("tbkit_lazy_trap")
    lazy.__getattr__ = trap
    sys.modules["tbkit_lazy_trap"] = lazy
    assert "xmlrpc.client" not in sys.modules
    try:
        before = set(sys.modules)
        integrity.check()
        integrity.loaded_distributions()
        report = integrity.report_of(integrity.new_probe())
        assert set(sys.modules) == before
        assert calls == [] and "xmlrpc.client" not in sys.modules
        assert not report.restart_required
    finally:
        del sys.modules["tbkit_lazy_trap"]


def test_sys_modules_full_of_odd_entries_degrades_never_raises(tmp_path):
    odd = {
        "tbkit_odd_none": None,
        "tbkit_odd_object": object(),
        "tbkit_odd_int": 42,
    }
    weird_file = types.ModuleType("tbkit_odd_file")
    weird_file.__file__ = 12345  # not a path
    spaces = types.ModuleType("tbkit_odd_spaces")
    spaces.__file__ = str(tmp_path / "a dir with spaces" / "mod.py")  # does not exist
    undecodable = types.ModuleType("tbkit_odd_bytes")
    undecodable.__file__ = os.fsdecode(b"/tmp/\xff\xfe-not-utf8/mod.so")  # surrogate-escaped
    odd.update(tbkit_odd_file=weird_file, tbkit_odd_spaces=spaces, tbkit_odd_bytes=undecodable)
    sys.modules.update(odd)
    try:
        report = integrity.report_of(integrity.new_probe())
        assert report.findings == [], report
        assert any("not modules" in n for n in report.notes)
        assert any("__file__" in n for n in report.notes)
    finally:
        for k in odd:
            del sys.modules[k]


def test_missing_proc_maps_is_a_degraded_finding_not_an_exception(fake):
    report = integrity.report_of(integrity.new_probe(maps_path=str(fake.root / "no-proc" / "maps")))
    (finding,) = report.findings
    assert finding.severity == "probe_degraded" and finding.distribution == "(probe)"
    assert "cannot read" in finding.change and "identity and version checks still ran" in finding.change
    assert not report.restart_required
    # identity and version checks still run without maps
    fake.write_package("fakepure", "2.0")
    report = integrity.report_of(integrity.new_probe(maps_path=str(fake.root / "no-proc" / "maps")))
    assert _by_dist(report)["fakepure"].severity == "changed_pure_python"


def test_a_vendored_top_level_module_does_not_lend_its_version(fake, tmp_path):
    """ipykernel loads debugpy, which imports its bundled `pydevd` (version 3.5.0) by bare name from
    site-packages/debugpy/_vendored/pydevd/: that version is not debugpy's. Every fresh Jupyter
    kernel once reported 'debugpy 3.5.0 (on disk: 1.8.x): restart required'."""
    vendored = fake.site / "fakepure" / "_vendored"
    vendored.mkdir()
    (vendored / "helperlib.py").write_text("__version__ = '9.9.9'\n")
    mod = types.ModuleType("helperlib")
    mod.__file__ = str(vendored / "helperlib.py")
    mod.__version__ = "9.9.9"
    sys.modules["helperlib"] = mod
    try:
        probe = integrity.new_probe(maps_path=str(fake.maps))
        report = integrity.report_of(probe)
        assert report.ok, report
    finally:
        sys.modules.pop("helperlib", None)


def test_unreadable_dist_info_is_a_degraded_finding(fake):
    probe = integrity.new_probe(maps_path=str(fake.maps))
    assert integrity.report_of(probe).ok
    # make METADATA unreadable for the probe: as root, chmod does not stop reads, so replace it
    # by a directory (EISDIR); as another user also drop permissions on the directory.
    info = fake.site / "fakepure-1.0.dist-info"
    (info / "METADATA").unlink()
    (info / "METADATA").mkdir()
    os.utime(fake.site, None)  # the probe relists a site dir whose mtime moved
    probe = integrity.new_probe(maps_path=str(fake.maps))
    report = integrity.report_of(probe)
    f = _by_dist(report)["fakepure"]
    assert f.severity == "probe_degraded", report
    assert "cannot read" in f.change and "METADATA" in f.change


def test_native_upgrade_on_a_fake_site(fake):
    probe = integrity.new_probe(maps_path=str(fake.maps))
    assert integrity.report_of(probe).ok
    fake.write_package("fakenative", "2.0", native=True)
    fake.write_maps(deleted=True)
    report = integrity.report_of(probe)
    f = _by_dist(report)["fakenative"]
    assert f.severity == "restart_required" and report.restart_required
    assert (f.loaded_version, f.disk_version) == ("1.0", "2.0")
    assert "mapped files deleted (replaced on disk)" in f.change
    assert "RESTART REQUIRED" in str(report) and "Restart" in str(report)
    assert "<table>" in report._repr_html_()
    assert set(_by_dist(report)) == {"fakenative"}


def test_native_same_version_replace_without_build_ids_is_not_called_benign(fake):
    probe = integrity.new_probe(maps_path=str(fake.maps))
    assert integrity.report_of(probe).ok
    fake.write_package("fakenative", "1.0", native=True)  # new inode, same version, fake ELF
    fake.write_maps(deleted=True)
    f = _by_dist(integrity.report_of(probe))["fakenative"]
    assert f.severity == "restart_required"
    assert "build-id" in f.change


def test_pure_python_changes(fake):
    probe = integrity.new_probe(maps_path=str(fake.maps))
    assert integrity.report_of(probe).ok
    fake.write_package("fakepure", "1.0")  # same-version reinstall
    f = _by_dist(integrity.report_of(probe))["fakepure"]
    assert f.severity == "benign", f
    fake.write_package("fakepure", "1.1")
    f = _by_dist(integrity.report_of(probe))["fakepure"]
    assert f.severity == "changed_pure_python" and f.disk_version == "1.1"


def test_half_installed_stash_is_reported(fake):
    probe = integrity.new_probe(maps_path=str(fake.maps))
    assert integrity.report_of(probe).ok
    (fake.site / "~akenative").mkdir()  # pip's stash of `fakenative`, left by a killed install
    f = _by_dist(integrity.report_of(probe))["fakenative"]
    assert f.severity == "restart_required"
    assert "an install is in progress or was interrupted" in f.change


def test_first_restart_report_is_sticky(fake, tmp_path):
    fake.write_package("fakenative", "2.0", native=True)
    fake.write_maps(deleted=True)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import fakenative, types\n"
        "m = types.ModuleType('fakenative._ext'); m.__file__ = sys.argv[2]; sys.modules[m.__name__] = m\n"
        "from tbkit import integrity\n"
        "assert integrity.first_restart_report() is None\n"
        "first = integrity.check(); assert first.restart_required, first\n"
        "later = integrity.check()\n"
        "assert integrity.first_restart_report() is first\n"
        "print('sticky ok')\n"
    )
    env = dict(os.environ, TBKIT_PROBE_MAPS=str(fake.maps))
    proc = subprocess.run(
        [sys.executable, "-c", code, str(fake.site), str(fake.site / "fakenative" / "_ext.so")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0 and "sticky ok" in proc.stdout, proc.stderr


def test_import_tbkit_is_light():
    code = "import sys, tbkit; print(sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_build_id_helpers():
    from tbkit import _probe

    loaded = _probe.loaded_build_ids()
    assert loaded, "at least libc carries a build-id"
    path, hexid = loaded[0]
    if Path(path).exists():
        assert _probe.build_id(path) == hexid
    assert _probe.build_id(__file__) is None  # not an ELF file


def test_loaded_distributions_spell_versions_as_the_dist_info_does(tmp_path):
    # like torch: __version__ "2.15.0+cu132", METADATA "2.15.0"; pip pins must use the latter
    fake = FakeSite(tmp_path)
    (fake.site / "fakepure" / "__init__.py").write_text("__version__ = '1.0+cu999'\n")
    fake.load()
    try:
        probe = integrity.new_probe(maps_path=str(fake.maps))
        assert integrity.report_of(probe).ok  # 1.0+cu999 loaded vs 1.0 on disk is no change
        loaded = probe.loaded_distributions()
        assert loaded["fakepure"] == "1.0" and loaded["fakenative"] == "1.0"
    finally:
        fake.unload()


def test_a_failing_probe_becomes_a_degraded_finding():
    class Broken:
        def check(self):
            raise RuntimeError("boom")

    report = integrity.report_of(Broken())
    (finding,) = report.findings
    assert finding.severity == "probe_degraded" and "boom" in finding.change
    assert not report.ok and not report.restart_required
