"""The install gate end to end, in throwaway venvs with NumPy 2.0.2 *imported*, against real pip and
local wheels only (--no-index). Each scenario runs in the venv's interpreter and reports back as JSON:
what the gate raised, the plan it showed, how many processes it started (audit hook), whether
NumPy's files on disk kept their identity, and what the probe says afterwards."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import textwrap
from pathlib import Path

import pytest

from checkout_venv import UV
from checkout_venv import checkout_venv as make_venv
from tiny_wheels import make_wheel

pytestmark = pytest.mark.slow


PRELUDE = textwrap.dedent("""
    import json, os, sys
    import numpy  # loaded before tbkit: the gate must never replace it under us
    import tbkit
    from tbkit.guard import integrity
    from tbkit.errors import InstallFailed, InstallRefused

    SPAWNED = []
    sys.addaudithook(lambda ev, args: SPAWNED.append(ev) if ev in ("subprocess.Popen", "os.posix_spawn") else None)
    WHEELS = json.loads(sys.argv[1])

    def numpy_identity():
        core = sys.modules["numpy._core._multiarray_umath"].__dict__["__file__"]
        st = os.stat(core)
        dist = [d for d in os.listdir(os.path.dirname(os.path.dirname(numpy.__file__)))
                if d.startswith("numpy-") and d.endswith(".dist-info")]
        return [st.st_dev, st.st_ino, sorted(dist)]

    def attempt(*reqs, **kw):
        kw.setdefault("no_index", True)
        kw.setdefault("find_links", WHEELS)
        kw.setdefault("quiet", True)
        before, n = numpy_identity(), len(SPAWNED)
        out = {}
        try:
            result = tbkit.ensure(*reqs, **kw)
            out.update(ok=True, installed=result.installed, modules=result.verified_modules)
        except (InstallRefused, InstallFailed) as err:
            plan = getattr(err, "plan", None)
            out.update(ok=False, error=type(err).__name__, message=str(err), plan=str(plan) if plan else None,
                       distributions=list(getattr(err, "distributions", ())))
        out["spawned"] = len(SPAWNED) - n
        out["numpy_unchanged"] = numpy_identity() == before
        report = integrity.check()
        out["integrity_ok"] = report.ok
        out["restart_required"] = report.restart_required
        out["imported_here"] = sorted(m for m in ("six", "tinypkg", "brokenpkg", "needsoldnumpy", "badscheme") if m in sys.modules)
        return out
""")


def run_scenario(python: Path, wheel_dirs, body: str, env=None) -> dict:
    code = PRELUDE + textwrap.dedent(body) + "\nprint('RESULT ' + json.dumps(out))\n"
    proc = subprocess.run(
        [str(python), "-c", code, json.dumps([str(d) for d in wheel_dirs])],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"scenario crashed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.fixture(scope="module")
def local_wheels(tmp_path_factory) -> Path:
    extra = tmp_path_factory.mktemp("extra-wheels")
    make_wheel(extra, "needsoldnumpy", "1.0", requires=["numpy<2"])
    make_wheel(extra, "brokenpkg", "1.0", files={"brokenpkg/__init__.py": "raise ImportError('broken on purpose')\n"})
    make_wheel(extra, "tinypkg", "1.0")
    make_wheel(extra, "clipkg", "2.0")
    # plans fine (the dry run reads only METADATA) but pip's install step rejects the unknown .data scheme
    make_wheel(extra, "badscheme", "1.0", files={"badscheme/__init__.py": "", "badscheme-1.0.data/nonsense/x.txt": "x"})
    return extra


@pytest.fixture(scope="module")
def gate_venv(tmp_path_factory, wheelhouse) -> Path:
    return make_venv(
        tmp_path_factory.mktemp("gate") / "venv", wheelhouse, "numpy==2.0.2", "pip==25.3", "packaging==25.0"
    )


def test_replacing_loaded_numpy_is_refused_and_the_plan_is_shown(gate_venv, wheelhouse, local_wheels):
    both = run_scenario(
        gate_venv,
        [wheelhouse, local_wheels],
        'out = {"pinned": attempt("numpy==2.2.6"), "upgrade": attempt("numpy", upgrade=True)}',
    )
    out = both["pinned"]
    assert out["error"] == "InstallRefused", out
    assert "numpy 2.0.2 -> 2.2.6" in out["plan"] and "LOADED in this process" in out["plan"]
    assert "numpy" in out["distributions"] and "Nothing was installed" in out["message"]
    assert "numpy 2.0.2 is loaded and the plan wanted 2.2.6" in out["message"]
    assert "keep the loaded numpy 2.0.2: leave it out of the request" in out["message"]
    assert out["spawned"] >= 1  # pip's dry run did run ...
    assert out["numpy_unchanged"] and out["integrity_ok"]  # ... and nothing changed
    up = both["upgrade"]  # `pip install -U numpy`: the pin would hide the upgrade, so it is refused, not skipped
    assert up["error"] == "InstallRefused" and "upgrading numpy 2.0.2 -> 2.2.6" in up["message"], up
    assert up["numpy_unchanged"] and up["integrity_ok"]


def test_a_dependency_that_needs_numpy_below_2_is_refused_as_unsatisfiable(gate_venv, wheelhouse, local_wheels):
    # FORCE_COLOR=1 as ipykernel sets it: pip's ERROR lines quoted in the refusal must carry no colour codes
    out = run_scenario(
        gate_venv, [wheelhouse, local_wheels], 'out = attempt("needsoldnumpy")', env={"FORCE_COLOR": "1"}
    )
    assert out["error"] == "InstallRefused", out
    assert "cannot be installed while keeping the loaded versions" in out["message"]
    assert "numpy 2.0.2 -> 1.26.4" in out["message"] and "\x1b" not in out["message"] + out["plan"]
    # the advice names the package in conflict, its loaded version, what the plan wanted, and both ways out
    assert "In conflict: numpy 2.0.2 is loaded and the plan wanted 1.26.4" in out["message"]
    assert (
        "(1) keep the loaded numpy 2.0.2: ask for a version of needsoldnumpy" in out["message"]
        and "(2) Start a new Python process" in out["message"]
    )
    assert "NumPy" not in out["message"].split("In conflict")[1]  # no canned advice about another package
    assert "+ needsoldnumpy 1.0 (new)" in out["plan"] and "numpy 2.0.2 -> 1.26.4 (downgrade)" in out["plan"]
    assert out["numpy_unchanged"] and out["integrity_ok"] and out["imported_here"] == []


def test_unknown_package_is_a_clear_failure_and_nothing_changes(gate_venv, wheelhouse, local_wheels):
    env = {"FORCE_COLOR": "1"}
    out = run_scenario(gate_venv, [wheelhouse, local_wheels], 'out = attempt("no-such-package-tbkit")', env=env)
    assert out["error"] == "InstallFailed", out
    assert "\x1b" not in out["message"]
    assert "No matching distribution found for no-such-package-tbkit" in out["message"]
    assert "environment is unchanged" in out["message"]
    assert out["numpy_unchanged"] and out["integrity_ok"]


def test_unreachable_index_is_a_clear_failure_and_nothing_changes(gate_venv, wheelhouse, local_wheels):
    with socket.socket() as s:  # a port nothing listens on: connection refused, like an offline index
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    body = f'out = attempt("tinypkg", no_index=False, find_links=[], index_url="http://127.0.0.1:{port}/simple")'
    out = run_scenario(gate_venv, [wheelhouse, local_wheels], body, env={"PIP_RETRIES": "0", "PIP_TIMEOUT": "5"})
    assert out["error"] == "InstallFailed", out
    assert f"127.0.0.1:{port}" in out["message"] and "index is reachable" in out["message"]
    assert out["numpy_unchanged"] and out["integrity_ok"] and out["imported_here"] == []


def test_a_package_that_cannot_be_imported_is_caught_in_a_fresh_process(gate_venv, wheelhouse, local_wheels):
    out = run_scenario(gate_venv, [wheelhouse, local_wheels], 'out = attempt("brokenpkg")')
    assert out["error"] == "InstallFailed", out
    assert "import brokenpkg -> ImportError: broken on purpose" in out["message"]
    assert out["imported_here"] == []  # the broken module was never imported into this process
    assert out["numpy_unchanged"] and out["integrity_ok"]


def test_pip_failing_after_a_safe_plan_is_reported_with_what_landed(gate_venv, wheelhouse, local_wheels):
    out = run_scenario(gate_venv, [wheelhouse, local_wheels], 'out = attempt("badscheme")')
    assert out["error"] == "InstallFailed", out
    assert "pip failed while installing badscheme==1.0" in out["message"]
    # pip leaves this one half-installed (files and dist-info, then the error): the report says so and how to clean up
    assert "of the plan, badscheme==1.0 did get installed" in out["message"], out["message"]
    assert "pip uninstall -y badscheme" in out["message"] and "still intact" in out["message"]
    assert out["imported_here"] == []
    assert out["numpy_unchanged"] and out["integrity_ok"]


def test_safe_install_runs_the_exact_plan_then_already_satisfied_runs_no_pip(gate_venv, wheelhouse, local_wheels):
    out = run_scenario(
        gate_venv,
        [wheelhouse, local_wheels],
        """
        first = attempt("six")
        again = attempt("six>=1.16")
        out = {"first": first, "again": again}
    """,
    )
    first, again = out["first"], out["again"]
    assert first["ok"] and first["installed"] == ["six==1.17.0"] and first["modules"] == ["six"], first
    assert first["numpy_unchanged"] and first["integrity_ok"] and first["imported_here"] == []
    # dry run(s) + the install + the fresh-process import check
    assert first["spawned"] >= 3
    assert again == {**again, "ok": True, "installed": [], "spawned": 0}, again


def test_local_wheel_path_installs_only_when_allowed(gate_venv, wheelhouse, local_wheels):
    wheel = str(local_wheels / "tinypkg-1.0-py3-none-any.whl")
    out = run_scenario(
        gate_venv,
        [wheelhouse, local_wheels],
        f"""
        refused = attempt({wheel!r})
        allowed = attempt({wheel!r}, allow_paths=True)
        out = {{"refused": refused, "allowed": allowed}}
    """,
    )
    assert out["refused"]["error"] == "InstallRefused" and out["refused"]["spawned"] == 0
    allowed = out["allowed"]
    assert allowed["ok"] and allowed["installed"] == ["tinypkg==1.0"] and allowed["modules"] == ["tinypkg"], allowed
    assert allowed["numpy_unchanged"] and allowed["integrity_ok"]


def test_after_numpy_is_replaced_from_outside_every_install_is_refused(tmp_path, wheelhouse, local_wheels):
    python = make_venv(tmp_path / "venv", wheelhouse, "numpy==2.0.2", "pip==25.3", "packaging==25.0")
    out = run_scenario(
        python,
        [wheelhouse, local_wheels],
        f"""
        import subprocess
        # another process (a `!pip` in a terminal, a subprocess install) replaces NumPy under us
        subprocess.run([*{UV!r}, "pip", "install", "--quiet", "--python", sys.executable, "--no-index",
                        "--find-links", {str(wheelhouse)!r}, "numpy==2.2.6"], check=True)
        first = attempt("tinypkg")
        satisfied = attempt("pip")
        out = {{"first": first, "satisfied": satisfied, "sticky": integrity.first_restart_report() is not None}}
    """,
        env={"COLAB_RELEASE_TAG": "release-colab-test"},
    )  # Colab is recognised by its variable: its wording
    first = out["first"]
    assert first["error"] == "InstallRefused", first
    assert "numpy" in first["distributions"] and "this Colab session must restart" in first["message"]
    assert "Runtime → Restart session" in first["message"]
    assert first["spawned"] == 0  # refused before pip was even asked
    assert out["satisfied"]["error"] == "InstallRefused"  # even a satisfied requirement: the caller would import
    assert out["sticky"] and first["restart_required"]


CLI = (
    "import argparse, sys\n"
    "from tbkit.cli import install as command\n"
    "parser = argparse.ArgumentParser(prog='tbkit install')\n"
    "command.configure(parser)\n"
    "sys.exit(command.main(parser.parse_args(sys.argv[1:])))\n"
)


def test_tbkit_install_command(gate_venv, wheelhouse, local_wheels):
    def tbkit_install(*args):
        return subprocess.run([str(gate_venv), "-c", CLI, *args], capture_output=True, text=True, timeout=300)

    local = ["--no-index", "--find-links", str(wheelhouse), "--find-links", str(local_wheels)]
    dry = tbkit_install("--dry-run", *local, "clipkg")
    assert dry.returncode == 0 and "+ clipkg 2.0 (new)" in dry.stdout, dry
    bad = tbkit_install("clipkg; echo owned")
    assert bad.returncode == 2 and bad.stderr.startswith("tbkit refused the requirement") and "owned" not in bad.stdout
    # this process has not imported NumPy, so replacing it would be safe here; the plan says what it does
    numpy_plan = tbkit_install("--dry-run", *local, "numpy==2.2.6")
    assert numpy_plan.returncode == 0 and "~ numpy 2.0.2 -> 2.2.6 (upgrade)" in numpy_plan.stdout, numpy_plan
    assert "other Python process that has imported them must restart" in numpy_plan.stderr
    missing = tbkit_install(*local, "no-such-package-tbkit")
    assert missing.returncode == 1 and "No matching distribution" in missing.stderr
    done = tbkit_install("-q", *local, "clipkg")
    assert done.returncode == 0 and "installed clipkg==2.0" in done.stdout, done
    check = subprocess.run(
        [str(gate_venv), "-c", "import clipkg, numpy; print(numpy.__version__)"], capture_output=True, text=True
    )
    assert check.stdout.strip() == "2.0.2"  # the dry runs changed nothing


def test_without_pip_the_gate_refuses_instead_of_installing_blind(tmp_path, wheelhouse, local_wheels):
    python = make_venv(tmp_path / "nopip", wheelhouse, "numpy==2.0.2", "packaging==25.0")  # uv venvs have no pip
    out = run_scenario(python, [wheelhouse, local_wheels], 'out = attempt("tinypkg")')
    assert out["error"] == "InstallRefused", out
    assert "pip is not installed in this interpreter" in out["message"] and "ensurepip" in out["message"]
    assert out["spawned"] == 0 and out["numpy_unchanged"] and out["integrity_ok"]
