"""The release wheel, installed into a fresh venv the way users get it, runs `tbkit doctor` and
`tbkit run` (the README's main job) from that venv."""

from __future__ import annotations

import json
import subprocess

import pytest

from fresh_venv import venv_over_tests


@pytest.mark.slow
def test_release_wheel_runs_doctor_and_run_from_a_fresh_venv(tmp_path, tbkit_wheel, monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the venv must import the wheel, not a checkout
    # --system-site-packages supplies torch & co. (several GB, installed once per machine);
    # tbkit itself comes only from the wheel.
    venv = tmp_path / "venv"
    venv_over_tests(venv)
    py, tbkit = venv / "bin" / "python", venv / "bin" / "tbkit"
    subprocess.run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--force-reinstall",
            "--disable-pip-version-check",
            str(tbkit_wheel),
        ],
        check=True,
    )
    where = subprocess.run(
        [str(py), "-c", "import tbkit._probe, tbkit; print(tbkit._probe.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert where.startswith(str(venv)), where

    doctor = subprocess.run([str(tbkit), "doctor", "--json"], capture_output=True, text=True, cwd=tmp_path)
    assert doctor.returncode == 0, doctor.stderr
    ownership = json.loads(doctor.stdout)["ownership"]
    assert ownership["ok"] and ownership["dist_info"] == tbkit_wheel.name.split("-cp")[0] + ".dist-info"

    out = tmp_path / "report"
    run = subprocess.run(
        [str(tbkit), "run", "--json", "--out", str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["verdict"] in ("PASS", "WARN")
    assert (out / "report.json").is_file() and (out / "report.html").is_file()
