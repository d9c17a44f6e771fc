"""The notebook scenario in a real Jupyter kernel (ipykernel in a temporary venv, driven by
jupyter_client): NumPy imported, `%load_ext tbkit`, a `!pip install` that would replace NumPy is
refused and never runs, a safe install goes through, then NumPy is replaced from outside the kernel →
one restart banner after the next cell, and every later install is refused.

Everything installs from local wheels: the NumPy/six wheelhouse (tests/support/wheelhouse.py) and a cached
wheelhouse of ipykernel and its dependencies, downloaded once per machine on first use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
UV = [sys.executable, "-m", "uv"]  # uv as installed with the test extras, whatever PATH holds

KERNEL_WHEELHOUSE = Path(
    os.environ.get("TBKIT_KERNEL_WHEELHOUSE", Path.home() / ".cache" / "tbkit-tests" / "kernel-wheelhouse")
)


@pytest.fixture(scope="session")
def kernel_wheelhouse() -> Path:
    """ipykernel and its dependencies as wheels, fetched once per machine (the only registry access)."""
    if not any(KERNEL_WHEELHOUSE.glob("ipykernel-*.whl")):
        KERNEL_WHEELHOUSE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--disable-pip-version-check",
                "--only-binary",
                ":all:",
                "-d",
                str(KERNEL_WHEELHOUSE),
                "ipykernel",
            ],
            check=True,
        )
    return KERNEL_WHEELHOUSE


@pytest.fixture
def kernel_venv(tmp_path, wheelhouse, kernel_wheelhouse, tbkit_wheel) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([*UV, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    python = venv / "bin" / "python"
    local = ["--no-index", "--find-links", str(wheelhouse), "--find-links", str(kernel_wheelhouse)]
    subprocess.run(
        [*UV, "pip", "install", "--quiet", "--python", str(python), *local, "ipykernel", "numpy==2.0.2", "pip==25.3"],
        check=True,
    )
    subprocess.run(
        [*UV, "pip", "install", "--quiet", "--python", str(python), "--no-deps", str(tbkit_wheel)], check=True
    )
    return python


class Kernel:
    """A kernel started with the venv's interpreter; ``run`` returns what the front end would see."""

    def __init__(self, python: Path, workdir: Path) -> None:
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import KernelManager

        spec_dir = workdir / "kernels" / "tbkit-test"
        spec_dir.mkdir(parents=True)
        (spec_dir / "kernel.json").write_text(
            json.dumps(
                {
                    "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    "display_name": "tbkit test",
                    "language": "python",
                }
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "TBKIT_PIP", "PIP_", "VIRTUAL_ENV"))}
        env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"  # as in an activated venv
        self.km = KernelManager(
            kernel_name="tbkit-test", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(workdir / "kernels")])
        )
        self.km.start_kernel(cwd=str(workdir), env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)

    def run(self, code: str, timeout: float = 240) -> dict:
        seen = {"stdout": "", "stderr": "", "displays": [], "error": None}

        def hook(msg):
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                seen[content["name"]] += content["text"]
            elif kind in ("display_data", "execute_result"):
                seen["displays"].append(content["data"])
            elif kind == "error":
                seen["error"] = content

        reply = self.kc.execute_interactive(code, output_hook=hook, timeout=timeout)
        seen["status"] = reply["content"]["status"]
        return seen

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def numpy_on_disk(python: Path) -> tuple:
    """(dist-info dirs, inode of the compiled core) of the venv's NumPy, read from outside the kernel."""
    site = next((python.parent.parent / "lib").glob("python3*/site-packages"))
    dists = sorted(p.name for p in site.glob("numpy-*.dist-info"))
    core = next((site / "numpy" / "_core").glob("_multiarray_umath*.so"))
    return dists, core.stat().st_ino


def banners(seen: dict) -> list:
    return [d for d in seen["displays"] if "restart required" in d.get("text/html", "").lower()]


def test_notebook_install_gate_in_a_real_kernel(kernel_venv, wheelhouse, tmp_path):
    kernel = Kernel(kernel_venv, tmp_path)
    try:
        seen = kernel.run("import numpy\nprint(numpy.__version__)")
        assert seen["stdout"].strip() == "2.0.2", seen
        seen = kernel.run("%load_ext tbkit")
        assert seen["status"] == "ok" and "install gate on (mode strict)" in seen["stdout"], seen
        # A fresh kernel is intact: a banner here is a false alarm of the probe (every ipykernel loads
        # debugpy, whose vendored pydevd has its own __version__).
        assert not banners(seen), f"restart banner in a fresh kernel: {banners(seen)[0]['text/plain']}"

        # 1. an install that would replace the loaded NumPy: refused, pip never touches NumPy
        before = numpy_on_disk(kernel_venv)
        seen = kernel.run(f"!pip install numpy==2.2.6 --no-index --find-links {wheelhouse}\nafter = 1")
        assert seen["status"] == "error" and seen["error"]["ename"] == "InstallRefused", seen
        shown = "\n".join(seen["error"]["traceback"])
        assert "numpy 2.0.2 -> 2.2.6" in shown and "Traceback" not in shown
        assert numpy_on_disk(kernel_venv) == before
        seen = kernel.run("print('after' in dir(), numpy.__version__)")
        assert seen["stdout"].strip() == "False 2.0.2" and kernel.km.is_alive()
        assert not banners(seen)

        # 2. a safe install of a small pure-Python package goes through the gate and works
        seen = kernel.run(f"!pip install six --no-index --find-links {wheelhouse}")
        assert seen["status"] == "ok", seen
        assert "+ six 1.17.0 (new)" in seen["stdout"] and "installed six==1.17.0" in seen["stdout"], seen
        seen = kernel.run("import six\nprint(six.__version__)")
        assert seen["stdout"].strip() == "1.17.0" and not banners(seen)
        assert numpy_on_disk(kernel_venv) == before

        # 3. NumPy replaced from outside the kernel: one banner after the next cell
        subprocess.run(
            [
                *UV,
                "pip",
                "install",
                "--quiet",
                "--python",
                str(kernel_venv),
                "--no-index",
                "--find-links",
                str(wheelhouse),
                "numpy==2.2.6",
            ],
            check=True,
        )
        assert numpy_on_disk(kernel_venv) != before
        seen = kernel.run("x = 1 + 1")
        (banner,) = banners(seen)
        assert "numpy" in banner["text/html"] and "Kernel" in banner["text/html"]  # Jupyter wording, not Colab's
        assert "RESTART REQUIRED" in banner["text/plain"] and "numpy" in banner["text/plain"]
        assert not banners(kernel.run("y = 2"))  # one banner, not one per cell
        seen = kernel.run("%tbkit doctor")
        assert any(
            "numpy" in d.get("text/html", "") and "RESTART" in d.get("text/plain", "") for d in seen["displays"]
        ), seen

        # 4. from now on every install is refused, before pip is asked
        seen = kernel.run(f"!pip install tinypkg --no-index --find-links {wheelhouse}")
        assert seen["error"]["ename"] == "InstallRefused", seen
        assert "must restart" in "\n".join(seen["error"]["traceback"])
        seen = kernel.run("%tbkit install six")
        assert seen["error"]["ename"] == "InstallRefused", seen
        assert kernel.km.is_alive()
    finally:
        kernel.close()


def refusal_text(seen: dict) -> str:
    return "\n".join(seen["error"]["traceback"]) if seen["error"] else ""


def test_every_spelling_that_runs_pip_is_gated_in_a_real_kernel(kernel_venv, wheelhouse, tmp_path):
    """Env prefixes, %%bash/%%sh/%%script bash cells, -qU, -r with -c, pip uninstall and conda, and whole-cell
    planning, in one real kernel with NumPy 2.0.2 loaded (ipykernel sets FORCE_COLOR=1: no escape may show)."""
    from tiny_wheels import make_wheel

    local = tmp_path / "local-wheels"
    for name in ("tinyone", "tinytwo", "tinythree", "tinyfour"):
        make_wheel(local, name, "1.0")
    make_wheel(local, "needsoldnumpy", "1.0", requires=["numpy<2"])
    work = tmp_path / "work"
    work.mkdir()
    (work / "req.txt").write_text("tinythree\n-c cons.txt\n")
    (work / "cons.txt").write_text("numpy==2.0.2\n")
    (work / "bad-req.txt").write_text("tinyfour\nnumpy\n-c bad-cons.txt\n")
    (work / "bad-cons.txt").write_text("numpy>2.1\n")
    links = f"--no-index --find-links {wheelhouse} --find-links {local}"
    kernel = Kernel(kernel_venv, work)
    try:
        assert kernel.run("import numpy")["status"] == "ok"
        assert kernel.run("%load_ext tbkit")["status"] == "ok"
        before = numpy_on_disk(kernel_venv)

        def refused(code: str, *words: str) -> str:
            seen = kernel.run(code)
            assert seen["status"] == "error" and seen["error"]["ename"] == "InstallRefused", (code, seen)
            text = refusal_text(seen)
            assert "\x1b" not in text + seen["stdout"] + seen["stderr"], text  # no colour codes anywhere
            assert "Traceback" not in text and "nothing in it ran" in text, text
            for word in words:
                assert word in text, (word, text)
            return text

        # whole-cell planning: line 3 refused, so line 1's side effect never happens
        text = refused(
            f"open('line1', 'w').write('ran')\nx = 2\n!pip install {links} numpy==2.2.6",
            "numpy 2.0.2 is loaded and the plan wanted 2.2.6",
            "Two ways out",
            "Restart the kernel",
        )
        assert text.count("LOADED in this process") == 1  # the refusal is said once
        assert not (work / "line1").exists()
        assert kernel.run("print('x' in dir())")["stdout"].strip() == "False"
        refused(f"!pip install {links} needsoldnumpy", "numpy 2.0.2 is loaded and the plan wanted 1.26.4")

        # environment prefix: gated like the plain spelling, and a safe one installs
        refused(f"!PIP_NO_CACHE_DIR=1 pip install {links} numpy==2.2.6", "numpy 2.0.2")
        seen = kernel.run(f"!PIP_NO_CACHE_DIR=1 pip install -qU {links} tinyone\nimport tinyone")
        assert seen["status"] == "ok", seen
        seen = kernel.run(f"!pip install -Uq {links} tinyone")
        assert seen["status"] == "ok" and "\x1b" not in seen["stdout"], seen

        # -r with a constraints file: planned (the user's constraint and the loaded pins together) ...
        seen = kernel.run(f"!pip install {links} -r req.txt\nimport tinythree")
        assert seen["status"] == "ok" and "+ tinythree 1.0 (new)" in seen["stdout"], seen
        # ... and refused when the constraint would move the loaded NumPy
        refused(
            f"!pip install {links} --extra-index-url http://127.0.0.1:9/simple -r bad-req.txt",
            "numpy 2.0.2 is loaded and the plan wanted 2.2.6",
        )

        # %%bash / %%sh / %%script bash: refused cells run nothing, a safe one installs exactly its plan
        for magic in ("%%bash", "%%sh", "%%script bash"):
            refused(f"{magic}\necho ran > shell1\npip install {links} numpy==2.2.6\n", "numpy 2.0.2")
            assert not (work / "shell1").exists(), magic
        seen = kernel.run(f"%%bash\necho before > shell2\nPIP_NO_CACHE_DIR=1 pip install {links} tinytwo\n")
        assert seen["status"] == "ok" and "+ tinytwo 1.0 (new)" in seen["stdout"], seen
        assert kernel.run("import tinytwo; print(tinytwo.VERSION)")["stdout"].strip() == "1.0"

        # uninstalling the loaded NumPy, and conda/mamba: refused, nothing touched
        refused("!pip uninstall -y numpy", "it removes numpy 2.0.2, loaded in this process")
        refused("!conda install -y numpy", "it would change numpy 2.0.2")
        refused("%%bash\nmamba install -y tinyfour\n", "cannot plan conda/mamba")
        seen = kernel.run("!pip uninstall -y tinyfour")  # nothing loaded: runs as typed
        assert seen["status"] == "ok", seen

        assert numpy_on_disk(kernel_venv) == before
        seen = kernel.run("print(numpy.__version__)")
        assert seen["stdout"].strip() == "2.0.2" and not banners(seen)
    finally:
        kernel.close()
