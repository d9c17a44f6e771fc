"""`tbkit doctor [--json]`: the report, the facts, and the exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from probe_scenarios import FakeSite


def _doctor(*args, env=None, pre=""):
    code = f"{pre}\nimport sys\nfrom tbkit.cli import main\nrc = main({list(args)!r})\nprint('TORCH_LOADED', 'torch' in sys.modules)\nsys.exit(rc)"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=dict(os.environ, **(env or {}))
    )


def test_doctor_text_on_a_clean_interpreter():
    proc = subprocess.run([sys.executable, "-m", "tbkit", "doctor"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "tbkit integrity: OK" in proc.stdout
    assert "package ownership: OK" in proc.stdout
    for key in ("python", "platform", "numpy loaded", "numpy on disk", "torch on disk"):
        assert key in proc.stdout


def test_doctor_json_on_a_clean_interpreter():
    proc = _doctor("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout.split("TORCH_LOADED")[0])
    assert payload["integrity"]["ok"] is True and payload["integrity"]["restart_required"] is False
    facts = payload["facts"]
    assert facts["numpy loaded"] == "not loaded"  # doctor itself never imports NumPy for this
    assert facts["numpy on disk"][0].isdigit()
    assert facts["torch on disk"][0].isdigit()  # read from metadata
    assert payload["ownership"]["ok"] is True
    assert proc.stdout.split("TORCH_LOADED")[1].strip() == "False"  # doctor imports torch only with --cuda


def test_doctor_cuda_imports_torch_for_the_cuda_facts():
    proc = _doctor("doctor", "--json", "--cuda")
    assert proc.returncode == 0, proc.stderr
    out, torch_line = proc.stdout.split("TORCH_LOADED")
    facts = json.loads(out)["facts"]
    assert "cuda available" in facts and facts["torch"][0].isdigit()
    assert torch_line.strip() == "True"


def test_doctor_exits_non_zero_when_a_restart_is_required(tmp_path):
    fake = FakeSite(tmp_path)
    pre = (
        f"import sys, types; sys.path.insert(0, {str(fake.site)!r}); import fakenative\n"
        f"m = types.ModuleType('fakenative._ext'); m.__file__ = {str(fake.site / 'fakenative' / '_ext.so')!r}\n"
        "sys.modules[m.__name__] = m\n"
        "import tbkit\n"  # baseline taken here, before the 'upgrade' below
        "from pathlib import Path\n"
        f"sys.path.insert(0, {str(Path(__file__).parents[1] / 'support')!r})\n"
        "from probe_scenarios import FakeSite\n"
        f"FakeSite.write_package(types.SimpleNamespace(site=Path({str(fake.site)!r})), 'fakenative', '2.0', native=True)\n"
    )
    fake.write_maps(deleted=True)
    proc = _doctor("doctor", "--json", "--cuda", env={"TBKIT_PROBE_MAPS": str(fake.maps)}, pre=pre)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out, torch_line = proc.stdout.split("TORCH_LOADED")
    payload = json.loads(out)
    assert payload["integrity"]["restart_required"] is True
    (finding,) = payload["integrity"]["findings"]
    assert finding["distribution"] == "fakenative" and finding["severity"] == "restart_required"
    assert "restart required first" in payload["facts"]["torch"]
    assert torch_line.strip() == "False"  # doctor did not import torch into a process needing a restart
