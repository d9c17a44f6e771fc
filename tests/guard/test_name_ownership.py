"""tbkit.guard.ownership on site directories written by the test: who owns files of `tbkit/`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tbkit.guard import ownership

pytestmark = pytest.mark.quick


def _install(site: Path, dist: str, version: str, files: dict, record_extra: str = "") -> None:
    """Write ``files`` (path -> text) into ``site`` and a dist-info whose RECORD lists them, as pip does."""
    lines = []
    for path, text in files.items():
        target = site / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        lines.append(f"{path},sha256=x,{len(text.encode())}")
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n\nbody\nName: no\n")
    (info / "RECORD").write_text("\n".join(lines) + f"\n{info.name}/RECORD,,\n" + record_extra)


OURS = {"tbkit/__init__.py": "# ours\n", "tbkit/cli/__init__.py": "# cli\n", "tbkit/errors.py": "# errors\n"}


def test_a_whole_install_is_ok_in_both_modes(tmp_path):
    _install(tmp_path, "tbkit-ml", "0.1.0", OURS)
    _install(tmp_path, "six", "1.17.0", {"six.py": "# six\n"})
    for thorough in (False, True):
        report = ownership.check(str(tmp_path / "tbkit"), thorough=thorough)
        assert report.ok and report.version == "0.1.0" and report.ours == "tbkit_ml-0.1.0.dist-info"
        assert "OK" in report.advice()


def test_a_second_owner_that_adds_a_module_is_named_at_import_and_by_doctor(tmp_path):
    _install(tmp_path, "tbkit-ml", "0.1.0", OURS)
    _install(tmp_path, "tbkit", "0.6.1", {"tbkit/lattice.py": "# tight-binding\n"})
    (tmp_path / "tbkit" / "__pycache__").mkdir()  # the interpreter's, owned by no one: not a sign
    for thorough in (False, True):
        report = ownership.check(str(tmp_path / "tbkit"), thorough=thorough)
        (owner,) = report.owners
        assert (owner.name, owner.version, owner.files) == ("tbkit", "0.6.1", ["tbkit/lattice.py"])
        assert report.changed == []
    assert "tbkit 0.6.1" in report.warning_line() and "tbkit doctor" in report.warning_line()
    advice = report.advice()
    assert "python -m pip uninstall -y tbkit\n" in advice
    assert (
        advice.rstrip().splitlines()[-2].strip() == "python -m pip install --no-deps --force-reinstall tbkit-ml==0.1.0"
    )


def test_a_replaced_file_is_reported_even_when_the_other_owner_adds_nothing_new(tmp_path):
    _install(tmp_path, "tbkit-ml", "0.1.0", OURS)
    _install(tmp_path, "tbkit", "9.9.9", {"tbkit/errors.py": "# someone else's errors module\n"})
    report = ownership.check(str(tmp_path / "tbkit"))  # the quick variant: top-level sizes
    assert report.changed == ["tbkit/errors.py"] and [o.name for o in report.owners] == ["tbkit"]


def test_files_deleted_by_uninstalling_the_other_owner_are_reported(tmp_path):
    _install(tmp_path, "tbkit-ml", "0.1.0", OURS)
    (tmp_path / "tbkit" / "cli" / "__init__.py").unlink()
    assert ownership.check(str(tmp_path / "tbkit")).ok  # at import only the top level is compared
    report = ownership.check(str(tmp_path / "tbkit"), thorough=True)
    assert report.changed == ["tbkit/cli/__init__.py"] and not report.owners
    assert "replaced or removed" in report.advice()


def test_a_source_checkout_has_nothing_to_compare_and_reads_no_other_record(tmp_path):
    (tmp_path / "tbkit").mkdir()
    (tmp_path / "tbkit" / "__init__.py").write_text("")
    (tmp_path / "other.dist-info").mkdir()  # unreadable RECORD: never opened at import
    report = ownership.check(str(tmp_path / "tbkit"))
    assert report.ok and report.ours is None and "not from an installed wheel" in report.advice()


def test_record_paths_with_commas_are_quoted_csv(tmp_path):
    _install(tmp_path, "tbkit-ml", "0.1.0", OURS)
    _install(tmp_path, "odd", "1.0", {}, record_extra='"tbkit/a,b.py",sha256=y,3\n')
    (owner,) = ownership.check(str(tmp_path / "tbkit"), thorough=True).owners
    assert owner.files == ["tbkit/a,b.py"]


def test_the_imported_package_is_checked_by_default():
    report = ownership.check()
    assert Path(report.site, "tbkit") == Path(ownership.__file__).parents[1]


def test_the_check_at_import_imports_nothing_heavy():
    import subprocess
    import sys

    code = "import sys; before = set(sys.modules); import tbkit; print(sorted(set(sys.modules) - before))"
    new = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for heavy in ("importlib.metadata", "email", "csv", "zipfile", "torch", "numpy"):
        assert f"'{heavy}'" not in new, new
