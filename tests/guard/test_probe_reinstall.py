"""The probe against real reinstalls: real NumPy wheels (1.26.4, 2.0.2, 2.2.6) in throwaway venvs, a
live process with NumPy and tbkit loaded, and real pip / uv mutating the venv from outside.

Each scenario asserts the exact distribution and severity. The upgrade scenarios then show the
live process failing the way users saw it (`numpy.strings` -> ImportError `_center`), proving the
damage the probe reported is real.
"""

from __future__ import annotations

import pytest

from probe_scenarios import Child, make_venv, run, severities

pytestmark = pytest.mark.slow

INSTALLERS = ["pip", "uv"]


@pytest.fixture
def venv_202(tmp_path, wheelhouse, tbkit_wheel):
    return make_venv(tmp_path / "venv", wheelhouse, tbkit_wheel, "2.0.2")


def _assert_clean(report: dict) -> None:
    assert report["findings"] == [], report
    assert report["ok"] and not report["restart_required"]


@pytest.mark.parametrize("installer", INSTALLERS)
def test_same_version_forced_reinstall_is_benign(venv_202, installer):
    with Child(venv_202) as child:
        _assert_clean(child.report())
        venv_202.install(installer, "numpy==2.0.2", force=True)
        report = child.report()
        assert severities(report) == {"numpy": "benign"}, report
        (finding,) = report["findings"]
        assert finding["loaded_version"] == finding["disk_version"] == "2.0.2"
        assert "build-ids in memory and on disk are equal" in finding["change"]
        assert not report["restart_required"] and not report["first_restart"]
        # the reinstalled files are the same build: the live process keeps working
        assert child.ask("import", name="numpy.strings")["imported"]


@pytest.mark.parametrize("installer", INSTALLERS)
def test_upgrade_requires_restart_and_the_live_process_really_breaks(venv_202, installer):
    with Child(venv_202) as child:
        _assert_clean(child.report())
        venv_202.install(installer, "numpy==2.2.6")
        report = child.report()
        assert severities(report) == {"numpy": "restart_required"}, report
        (finding,) = report["findings"]
        assert (finding["loaded_version"], finding["disk_version"]) == ("2.0.2", "2.2.6")
        assert "mapped files deleted (replaced on disk)" in finding["change"]
        assert any(p.endswith(".so") for p in finding["paths"])
        assert report["first_restart"]
        # what users saw: a later submodule import comes from the new files and fails
        failure = child.ask("import", name="numpy.strings")
        assert not failure["imported"]
        assert failure["type"] == "ImportError" and "_center" in failure["message"], failure
        # sticky: still required after the failed import
        assert child.report()["restart_required"]


@pytest.mark.parametrize("installer", INSTALLERS)
def test_downgrade_requires_restart(venv_202, installer):
    with Child(venv_202) as child:
        venv_202.install(installer, "numpy==1.26.4")
        report = child.report()
        assert severities(report) == {"numpy": "restart_required"}, report
        (finding,) = report["findings"]
        assert (finding["loaded_version"], finding["disk_version"]) == ("2.0.2", "1.26.4")


@pytest.mark.parametrize("installer", INSTALLERS)
def test_uninstall_requires_restart(venv_202, installer):
    with Child(venv_202) as child:
        venv_202.uninstall(installer, "numpy")
        report = child.report()
        assert severities(report) == {"numpy": "restart_required"}, report
        (finding,) = report["findings"]
        assert finding["loaded_version"] == "2.0.2" and finding["disk_version"] is None
        assert "uninstalled" in finding["change"]


@pytest.mark.parametrize("installer", INSTALLERS)
def test_harmless_installs_report_nothing(tmp_path, wheelhouse, tbkit_wheel, installer):
    venv = make_venv(tmp_path / "venv", wheelhouse, tbkit_wheel, "2.0.2", with_pip=False)
    # an old pip (the one bundled with this Python) so that upgrading pip really changes files
    run([venv.python, "-m", "ensurepip"])
    with Child(venv) as child:
        _assert_clean(child.report())
        venv.install(installer, "numpy==2.0.2")  # no-op: already satisfied
        _assert_clean(child.report())
        venv.install(installer, "six", no_deps=True)  # unrelated small package
        _assert_clean(child.report())
        before = venv.pip("--version").stdout
        venv.install(installer, "--upgrade", "pip")
        assert venv.pip("--version").stdout != before  # pip really was replaced
        _assert_clean(child.report())
        assert child.ask("import", name="numpy.strings")["imported"]


@pytest.mark.parametrize("installer", INSTALLERS)
def test_probe_imported_after_the_damage_still_sees_it(venv_202, installer):
    # the live process has numpy only; tbkit (and its probe) arrive after the upgrade
    with Child(venv_202, mode="late") as child:
        venv_202.install(installer, "numpy==2.2.6")
        report = child.report()
        assert severities(report) == {"numpy": "restart_required"}, report
        (finding,) = report["findings"]
        assert (finding["loaded_version"], finding["disk_version"]) == ("2.0.2", "2.2.6")
        assert "mapped files deleted (replaced on disk)" in finding["change"]


def test_probe_imported_after_a_same_version_reinstall_calls_it_benign(venv_202):
    # pip moves numpy/ to its ~umpy/ stash before deleting it: the late probe first sees stash
    # paths, and still compares build-ids where the libraries were loaded from
    with Child(venv_202, mode="late") as child:
        venv_202.install("pip", "numpy==2.0.2", force=True)
        report = child.report()
        assert severities(report) == {"numpy": "benign"}, report


def test_loaded_distributions_in_a_venv(venv_202):
    with Child(venv_202) as child:
        loaded = child.ask("loaded")["loaded"]
        assert loaded["numpy"] == "2.0.2"
        assert loaded["tbkit-ml"] == "0.1.0"  # the distribution is tbkit-ml (docs/release.md)
        assert "pip" not in loaded  # installed, but no module of it is loaded
