"""The probe's wider fault matrix (issue 17), with real pip and uv in throwaway venvs and a live
process that imported tbkit first (as `%load_ext tbkit` does) and everything else on request:

1. versions attributed at the first import of a distribution whose import name differs from its
   name (pyyaml/yaml with its C extension, pyjwt/jwt), upgraded between `import tbkit` and then;
2. pip stash folders older than the process: `preexisting`, with the folder and the removal
   command, no restart; a stash that appears while the process runs keeps the restart verdict;
3. same-version reinstalls judged by content (RECORD hashes, build-ids), whatever the link mode;
4. editable installs of each kind setuptools makes (finder, compat .pth, strict), by pip and uv,
   followed to the compiled library actually loaded, which is rebuilt while loaded.

Each scenario has its negative: no finding where nothing loaded changed.
"""

from __future__ import annotations

import shutil
import time

import pytest

from probe_scenarios import Child, make_venv, severities, write_c_project, write_wheel

pytestmark = pytest.mark.slow

INSTALLERS = ["pip", "uv"]


def _clean(report: dict) -> None:
    assert report["findings"] == [], report
    assert not report["restart_required"] and not report["first_restart"]


def _imported(child: Child, *names: str) -> None:
    for name in names:
        answer = child.ask("import", name=name)
        assert answer["imported"], answer


@pytest.fixture
def venv_yaml(tmp_path, wheelhouse, tbkit_wheel):
    return make_venv(tmp_path / "venv", wheelhouse, tbkit_wheel, None, extra=("pyyaml==6.0.1", "pyjwt==2.9.0"))


@pytest.mark.parametrize("installer", INSTALLERS)
def test_upgraded_before_first_import_is_what_was_loaded(venv_yaml, installer):
    with Child(venv_yaml, mode="bare") as child:
        _clean(child.report())
        venv_yaml.install(installer, "pyyaml==6.0.2", "pyjwt==2.10.1")
        _imported(child, "yaml", "jwt", "yaml._yaml")  # yaml._yaml: PyYAML's C extension
        _clean(child.report())  # the false restart: "pyyaml 6.0.1->6.0.2 restart_required"
        loaded = child.ask("loaded")["loaded"]
        assert (loaded["pyyaml"], loaded["pyjwt"]) == ("6.0.2", "2.10.1"), loaded
        # changed after the first import: still caught, against the version first imported
        venv_yaml.install(installer, "pyyaml==6.0.1", "pyjwt==2.9.0")
        report = child.report()
        assert severities(report) == {"pyyaml": "restart_required", "pyjwt": "changed_pure_python"}, report
        by = {f["distribution"]: f for f in report["findings"]}
        assert (by["pyyaml"]["loaded_version"], by["pyyaml"]["disk_version"]) == ("6.0.2", "6.0.1")
        assert (by["pyjwt"]["loaded_version"], by["pyjwt"]["disk_version"]) == ("2.10.1", "2.9.0")


def test_a_stash_older_than_the_process_is_preexisting_not_a_restart(venv_yaml):
    stash = venv_yaml.site_packages / "~aml"  # what pip leaves of `yaml` when it dies mid-install
    shutil.copytree(venv_yaml.site_packages / "yaml", stash)
    time.sleep(0.5)  # clearly older than the process started next
    with Child(venv_yaml, mode="bare") as child:
        _imported(child, "yaml")
        report = child.report()
        assert severities(report) == {"pyyaml": "preexisting"}, report
        (finding,) = report["findings"]
        assert finding["paths"] == [str(stash)]
        assert f"rm -rf '{stash}'" in finding["change"], finding["change"]
        assert not report["restart_required"] and not report["first_restart"]
        # the command works, and then nothing is left to report
        shutil.rmtree(stash)
        _clean(child.report())
        # a stash that appears while the process runs: an install is under way (today's verdict)
        shutil.copytree(venv_yaml.site_packages / "yaml", venv_yaml.site_packages / "~-ml")
        report = child.report()
        assert severities(report) == {"pyyaml": "restart_required"}, report
        assert "an install is in progress or was interrupted" in report["findings"][0]["change"]


@pytest.mark.parametrize("installer, link_mode", [("pip", None), ("uv", "copy"), ("uv", "hardlink"), ("uv", "symlink")])
def test_same_version_reinstall_of_identical_files_is_benign(tmp_path, wheelhouse, tbkit_wheel, installer, link_mode):
    venv = make_venv(tmp_path / "venv", wheelhouse, tbkit_wheel, None)
    mode = [f"--link-mode={link_mode}"] if link_mode else []
    if installer == "uv":
        venv.uv("install", "--no-index", "--find-links", str(wheelhouse), *mode, "pyyaml==6.0.1")
    else:
        venv.install("pip", "pyyaml==6.0.1")
    with Child(venv, mode="bare") as child:
        _imported(child, "yaml", "yaml._yaml")
        _clean(child.report())
        venv.install("pip", "six", no_deps=True)  # unrelated: nothing to report
        _clean(child.report())
        if installer == "uv":
            venv.uv("install", "--no-index", "--find-links", str(wheelhouse), *mode, "--reinstall", "pyyaml==6.0.1")
        else:
            venv.install("pip", "pyyaml==6.0.1", force=True)
        report = child.report()
        # the dist-info is new (its change time, even where the file system reuses its inode number)
        assert severities(report) == {"pyyaml": "benign"}, report
        assert "identical" in report["findings"][0]["change"], report
        assert not report["restart_required"] and not report["first_restart"]


@pytest.mark.parametrize("installer", INSTALLERS)
def test_same_version_with_other_pure_python_content_is_changed(tmp_path, wheelhouse, tbkit_wheel, installer):
    # distribution `tbkit-demo-pure`, module `tbdemo` (names differ); two builds of 1.0
    files = {"tbdemo/__init__.py": "__version__ = '1.0'\nVALUE = {}\n", "tbdemo/util.py": "X = 1\n"}
    first = {k: v.format(1) for k, v in files.items()}
    other = {k: v.format(2) for k, v in files.items()}
    links = {name: tmp_path / name for name in ("a", "a-again", "b")}
    for name, content in (("a", first), ("a-again", first), ("b", other)):
        write_wheel(links[name], "tbkit-demo-pure", "1.0", content)
    venv = make_venv(tmp_path / "venv", wheelhouse, tbkit_wheel, None)
    venv.install(installer, "tbkit-demo-pure==1.0", links=links["a"])
    with Child(venv, mode="bare") as child:
        _imported(child, "tbdemo")
        _clean(child.report())
        venv.install(installer, "tbkit-demo-pure==1.0", force=True, links=links["a-again"])
        report = child.report()
        assert severities(report) == {"tbkit-demo-pure": "benign"}, report
        venv.install(installer, "tbkit-demo-pure==1.0", force=True, links=links["b"])
        report = child.report()
        assert severities(report) == {"tbkit-demo-pure": "changed_pure_python"}, report
        assert "differ" in report["findings"][0]["change"], report


def _install_editable(venv, installer: str, project, mode: str | None) -> None:
    settings = ["--config-settings", f"editable_mode={mode}"] if mode else []
    if installer == "pip":
        venv.pip("install", "-q", "--no-index", "--no-build-isolation", *settings, "-e", str(project))
    else:
        venv.uv("install", "--no-index", "--no-build-isolation", "--reinstall", *settings, "-e", str(project))


@pytest.mark.parametrize("mode", [None, "compat", "strict"])
@pytest.mark.parametrize("installer", INSTALLERS)
def test_editable_c_extension_rebuilt_while_loaded(tmp_path, wheelhouse, tbkit_wheel, installer, mode):
    venv = make_venv(tmp_path / "venv", wheelhouse, tbkit_wheel, None, extra=("setuptools==80.9.0",))
    project = write_c_project(tmp_path / "proj", answer=42)
    _install_editable(venv, installer, project, mode)
    with Child(venv, mode="bare") as child:
        _imported(child, "cdemo")
        _clean(child.report())
        assert child.ask("loaded")["loaded"]["tbkit-cdemo"] == "1.0"
        venv.install(installer, "six", no_deps=True)  # unrelated: nothing to report
        _clean(child.report())
        write_c_project(project, answer=43)  # the extension's code changes and is rebuilt
        _install_editable(venv, installer, project, mode)
        report = child.report()
        assert severities(report) == {"tbkit-cdemo": "restart_required"}, report


@pytest.mark.parametrize("installer", INSTALLERS)
def test_editable_reinstalled_unchanged_needs_no_restart(tmp_path, wheelhouse, tbkit_wheel, installer):
    venv = make_venv(tmp_path / "venv", wheelhouse, tbkit_wheel, None, extra=("setuptools==80.9.0",))
    project = write_c_project(tmp_path / "proj", answer=42)
    _install_editable(venv, installer, project, None)
    with Child(venv, mode="bare") as child:
        _imported(child, "cdemo")
        _clean(child.report())
        _install_editable(venv, installer, project, None)  # same sources: the same library
        report = child.report()
        assert set(severities(report).values()) <= {"benign"}, report
        assert not report["restart_required"] and not report["first_restart"]
