"""Tier 2 through the runner and the install gate: captum refused (SKIP row, nothing changed) and
captum installed from a local wheel (the plan shown, a real attribution result).

How "captum absent" is made without touching the system Python (others' tests run against it) and
without installing torch into a throwaway venv (gigabytes):

    a fresh venv (no system site-packages) + a *view* of the system site-packages: a folder of
    symlinks to every entry there except captum's, added by a .pth file (``site.addsitedir``, so
    the editable tbkit's own .pth is honoured too).

In that interpreter torch, NumPy, pip and tbkit import from the system files, while captum is
neither importable nor known to ``importlib.metadata``/pip — exactly a Colab runtime without
captum. The view lives outside the venv, so pip treats everything in it as "outside the
environment" and would never uninstall through the symlinks; the only thing the gate may write is
the venv's own site-packages, which the tests snapshot before and after.

The refusal is a real loaded-package conflict, not a mock: the local find-links folder holds a
hand-made ``captum-0.9.0`` wheel whose METADATA requires ``numpy<2`` (and a real NumPy 1.26.4
wheel), while NumPy 2.x is loaded in the child process. pip's dry run with the loaded versions
pinned cannot resolve; without the pins it would downgrade the loaded NumPy — so the gate refuses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tiny_wheels import make_wheel

SUPPORT = Path(__file__).resolve().parents[1] / "support"
pytestmark = pytest.mark.slow

# Runs inside the view venv: Tier 2 through tbkit.run on a healthy zoo decoder, then reports what it
# saw and what changed as JSON (a file, so progress bars on stdout cannot garble it).
CHILD = r"""
import importlib.metadata as md, importlib.util, json, os, sys
sys.path.insert(0, os.environ["TBKIT_TEST_DIR"])
import numpy, torch  # NumPy 2.x is loaded before anything is installed, as in any notebook
import tbkit
import tbkit.guard.gate
from tbkit.guard import integrity
import models as zoo

site, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
before = sorted(os.listdir(site))
result = {"captum_importable_before": importlib.util.find_spec("captum") is not None}
if mode == "install":
    plan = tbkit.guard.gate.plan("captum>=0.9")
    result["plan"] = str(plan)
    result["plan_items"] = [(i.name, i.version, i.action) for i in plan.items]
lm = zoo.loaded(zoo.build(zoo.LeakyMaskDecoder if mode == "install" else zoo.HealthyDecoder))
report = tbkit.run(lm, tiers=(2,), out_dir=out)
with open(os.path.join(out, "report.json"), encoding="utf-8") as fh:
    result["rows"] = json.load(fh)["rows"]
result["verdict"] = str(report.verdict)
result["site_before"], result["site_after"] = before, sorted(os.listdir(site))
result["captum_importable_after"] = importlib.util.find_spec("captum") is not None
result["captum_file"] = getattr(sys.modules.get("captum"), "__file__", None)
check = integrity.check()
result["restart_required"] = bool(check.restart_required)
result["numpy_loaded"], result["numpy_on_disk"] = numpy.__version__, md.version("numpy")
with open(os.path.join(out, "child.json"), "w", encoding="utf-8") as fh:
    json.dump(result, fh)
"""


def view_venv(root: Path, hide: tuple = ("captum",)) -> tuple:
    """(python, venv site-packages) of a venv that sees the system site-packages minus ``hide``."""
    venv, view = root / "venv", root / "system-view"
    subprocess.run([sys.executable, "-m", "uv", "venv", "-q", "-p", sys.executable, str(venv)], check=True)
    view.mkdir()
    # every site dir this interpreter sees (a venv over system site-packages has two), first wins
    import site as site_mod

    dirs = [sysconfig.get_paths()["purelib"], *site_mod.getsitepackages()]
    for folder in dict.fromkeys(d for d in dirs if Path(d).is_dir()):
        for entry in Path(folder).iterdir():
            low = entry.name.lower()
            if any(low == h or low.startswith(h + "-") for h in hide) or (view / entry.name).exists():
                continue
            (view / entry.name).symlink_to(entry)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "_tbkit_test_system_view.pth").write_text(f"import site; site.addsitedir({str(view)!r})\n")
    return python, site


def fake_wheel(folder: Path, name: str, version: str, requires: list) -> Path:
    """A minimal valid wheel whose METADATA declares ``requires``."""
    return make_wheel(
        folder, name, version, requires=requires, files={f"{name}/__init__.py": f'__version__ = "{version}"\n'}
    )


def run_child(python: Path, site: Path, out: Path, mode: str, find_links: Path) -> dict:
    env = dict(
        os.environ,
        TBKIT_TEST_DIR=str(SUPPORT),
        TBKIT_PIP_NO_INDEX="1",
        TBKIT_PIP_FIND_LINKS=str(find_links),
        PIP_NO_INPUT="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    env.pop("PYTHONPATH", None)
    out.mkdir()
    proc = subprocess.run(
        [str(python), "-c", CHILD, str(site), str(out), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"child failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    result = json.loads((out / "child.json").read_text())
    result["stdout"] = proc.stdout
    return result


def rows_of(result: dict, check: str) -> list:
    return [r for r in result["rows"] if r["check"] == check]


def test_view_venv_hides_captum_and_nothing_else(tmp_path):
    python, site = view_venv(tmp_path)
    probe = (
        "import importlib.util as u, importlib.metadata as md, json; "
        "print(json.dumps([u.find_spec(n) is not None for n in ('captum', 'torch', 'numpy', 'tbkit', 'pip')]"
        " + [any(d.metadata['Name'] == 'captum' for d in md.distributions())]))"
    )
    out = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True).stdout
    assert json.loads(out) == [False, True, True, True, True, False]


def test_gate_refusal_makes_attribution_a_skip_and_changes_nothing(tmp_path, wheelhouse):
    python, site = view_venv(tmp_path)
    links = tmp_path / "links"
    fake_wheel(links, "captum", "0.9.0", ["numpy<2"])
    (numpy1,) = wheelhouse.glob("numpy-1.26.4-*.whl")
    (links / numpy1.name).symlink_to(numpy1)

    result = run_child(python, site, tmp_path / "out", "refuse", links)

    assert result["captum_importable_before"] is False
    (row,) = rows_of(result, "attribution")
    assert row["status"] == "SKIP", row
    detail = row["detail"]
    assert "refused" in detail and "captum" in detail, detail
    assert "numpy 2." in detail and "1.26.4" in detail, detail  # the real conflict is named
    # the other Tier 2 checks still ran, with real results
    for check in ("attention", "robustness", "capacity"):
        got = rows_of(result, check)
        assert got and all(r["status"] in ("PASS", "WARN") for r in got), (check, got)
    assert result["verdict"] in ("PASS", "WARN")
    # nothing changed: no file in the venv, captum still absent, NumPy untouched, probe clean
    assert result["site_after"] == result["site_before"]
    assert result["captum_importable_after"] is False
    assert result["numpy_loaded"] == result["numpy_on_disk"] and result["numpy_loaded"].startswith("2.")
    assert result["restart_required"] is False


def _gate_pins_torch_with_local_label() -> bool:
    """Does the gate's dry run pin the loaded torch to a version with a local label (+cu…)?"""
    import torch  # noqa: F401  (loaded, as in a notebook)

    from tbkit.guard import integrity
    from tbkit.guard.gate.plan import pinnable

    return "+" in pinnable(integrity.loaded_distributions()).get("torch", "")


# Known gate bug (python/tbkit/guard/gate/plan.py + integrity, not this file): the dry run pins each
# loaded distribution to its *in-memory* version. PyPI's torch reports torch.__version__
# "2.15.0+cu132" while its dist-info says "2.15.0"; pip cannot satisfy the constraint
# torch==2.15.0+cu132 with the installed 2.15.0 (a pin with a local label matches only that label),
# so every install that depends on torch is refused as "would change a loaded distribution".
# Pinning Version(v).public makes this test pass (verified by hand with a patched copy).
# The condition asks the gate's own pinning, so the test runs normally as soon as that is fixed.
@pytest.mark.xfail(
    condition=_gate_pins_torch_with_local_label(),
    strict=True,
    raises=AssertionError,
    reason="install gate pins torch to its in-memory version with a local label (+cu…), "
    "which pip cannot match to the installed dist-info version",
)
def test_gate_installs_captum_from_a_local_wheel_and_attribution_runs(tmp_path, wheelhouse):
    python, site = view_venv(tmp_path)
    assert any(wheelhouse.glob("captum-0.9.0-*.whl")), "run `python3 tests/support/wheelhouse.py` once"

    result = run_child(python, site, tmp_path / "out", "install", wheelhouse)

    assert result["captum_importable_before"] is False
    assert result["plan_items"] == [["captum", "0.9.0", "new"]], result["plan"]
    assert "+ captum 0.9.0 (new)" in result["plan"]
    # installed into the venv only, and imported from there
    assert result["captum_importable_after"] is True
    assert any(n.startswith("captum-0.9.0") for n in result["site_after"])
    assert result["captum_file"] and result["captum_file"].startswith(str(site))
    assert result["restart_required"] is False and result["numpy_loaded"] == result["numpy_on_disk"]
    # a real attribution result: the leaky decoder's future-token attribution is found
    m = {r["metric"]: r for r in rows_of(result, "attribution")}
    assert m["convergence_delta_rel"]["status"] == "PASS" and float(m["convergence_delta_rel"]["value"]) <= 0.05
    assert m["future_attribution_share"]["status"] == "FAIL" and float(m["future_attribution_share"]["value"]) > 1e-3
