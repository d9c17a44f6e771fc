"""Helpers for the real-reinstall tests: throwaway venvs with real NumPy wheels, a long-lived
child process that has NumPy (and tbkit) loaded and answers requests as JSON lines, and the real
installers (pip, uv) mutating the venv from a second process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

UV = shutil.which("uv") or "uv"

# The live process: imports numpy (and tbkit unless told to wait), then serves requests.
CHILD = r"""
import json, sys
mode = sys.argv[1]
if mode != "bare":  # bare: tbkit only, everything else imported on request
    import numpy
if mode in ("early", "bare"):
    import tbkit
    from tbkit.guard import integrity
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    cmd = req["cmd"]
    try:
        if cmd == "report":
            from tbkit.guard import integrity
            out = integrity.check().to_dict()
            first = integrity.first_restart_report()
            out["first_restart"] = first is not None
        elif cmd == "import":
            try:
                __import__(req["name"])
                out = {"imported": True}
            except BaseException as err:
                out = {"imported": False, "type": type(err).__name__, "message": str(err)}
        elif cmd == "loaded":
            from tbkit.guard import integrity
            out = {"loaded": integrity.loaded_distributions()}
        else:
            out = {"error": "unknown command " + cmd}
    except BaseException as err:
        out = {"error": repr(err)}
    print(json.dumps(out), flush=True)
"""


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    """Run a command (argument list, never a shell); fail with its output if it fails."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


class Venv:
    def __init__(self, path: Path, wheelhouse: Path):
        self.path = path
        self.wheelhouse = wheelhouse
        self.python = path / "bin" / "python"

    def pip(self, *args: str) -> subprocess.CompletedProcess:
        return run([self.python, "-m", "pip", "--disable-pip-version-check", *args])

    def uv(self, *args: str) -> subprocess.CompletedProcess:
        return run([UV, "pip", *args[:1], "--python", self.python, *args[1:]], env=_uv_env())

    @property
    def site_packages(self) -> Path:
        (site,) = (self.path / "lib").glob("python3*/site-packages")
        return site

    def install(
        self, installer: str, *reqs: str, force: bool = False, no_deps: bool = False, links: Path | None = None
    ) -> None:
        """`pip install` / `uv pip install` from the local wheelhouse only (or `links`)."""
        extra = ["--no-index", "--find-links", str(links or self.wheelhouse)]
        if no_deps:
            extra.append("--no-deps")
        if installer == "pip":
            self.pip("install", "-q", *extra, *(["--force-reinstall"] if force else []), *reqs)
        else:
            self.uv("install", *extra, *(["--reinstall"] if force else []), *reqs)

    def uninstall(self, installer: str, name: str) -> None:
        if installer == "pip":
            self.pip("uninstall", "-y", "-q", name)
        else:
            self.uv("uninstall", name)


def _uv_env() -> dict:
    env = dict(os.environ)
    env["UV_OFFLINE"] = "1"
    env.setdefault("UV_CACHE_DIR", str(Path.home() / ".cache" / "tbkit-tests" / "uv"))
    return env


def make_venv(
    path: Path,
    wheelhouse: Path,
    tbkit_wheel: Path,
    numpy_version: str | None,
    with_pip: bool = True,
    extra: tuple[str, ...] = (),
) -> Venv:
    """A fresh venv (uv venv: fast) with numpy==numpy_version (unless None), tbkit (--no-deps),
    pip and the `extra` requirements."""
    run([UV, "venv", "-q", "--python", sys.executable, path], env=_uv_env())
    venv = Venv(path, wheelhouse)
    reqs = [*([f"numpy=={numpy_version}"] if numpy_version else []), str(tbkit_wheel), *extra]
    if with_pip:
        reqs.append("pip==25.3")
    run(
        [
            UV,
            "pip",
            "install",
            "-q",
            "--python",
            venv.python,
            "--no-index",
            "--find-links",
            wheelhouse,
            "--no-deps",
            *reqs,
        ],
        env=_uv_env(),
    )
    return venv


class Child:
    """The long-lived process with NumPy loaded: ask it for reports over stdin/stdout."""

    def __init__(self, venv: Venv, mode: str = "early", env: dict | None = None):
        script = venv.path / "tbkit_child.py"
        script.write_text(CHILD)
        full_env = dict(os.environ)
        full_env.pop("PYTHONPATH", None)  # the venv's own tbkit, not the checkout's
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [str(venv.python), "-I", str(script), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(venv.path),
            env=full_env,
        )
        hello = self._read()
        assert hello.get("ready"), hello

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"child exited: {self.proc.stderr.read()}")
        return json.loads(line)

    def ask(self, cmd: str, **kw) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()
        out = self._read()
        assert "error" not in out, out
        return out

    def report(self) -> dict:
        return self.ask("report")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def record_hash(path: Path) -> str:
    """A RECORD hash column: sha256, urlsafe base64 without padding."""
    import base64
    import hashlib

    digest = hashlib.sha256(path.read_bytes()).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def severities(report: dict) -> dict:
    """distribution -> severity, for asserting exact outcomes."""
    return {f["distribution"]: f["severity"] for f in report["findings"]}


class FakeSite:
    """A site directory made by hand, for fast in-process scenarios: a native-looking package
    `fakenative` (its `_ext.so` is "mapped" through a maps file the probe is pointed at) and a
    pure-Python package `fakepure`, each with a dist-info."""

    def __init__(self, root: Path):
        self.root = root
        self.site = root / "site packages"  # a space on purpose
        self.site.mkdir(parents=True)
        self.maps = root / "maps"
        self.write_package("fakenative", "1.0", native=True)
        self.write_package("fakepure", "1.0")
        self.write_maps(deleted=False)

    def write_package(self, name: str, version: str, native: bool = False) -> None:
        pkg = self.site / name
        pkg.mkdir(exist_ok=True)
        # replace, never rewrite in place (what installers do): write aside, then rename over
        tmp = self.site / f".{name}.tmp"
        tmp.write_text(f"__version__ = {version!r}\n")
        os.replace(tmp, pkg / "__init__.py")
        if native:
            tmp.write_bytes(b"\x7fELF not really a library " + version.encode())
            os.replace(tmp, pkg / "_ext.so")
        for old in self.site.glob(f"{name}-*.dist-info"):
            shutil.rmtree(old)
        info = self.site / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nbody\n")
        # RECORD with real hashes, as installers write it: the probe compares them on reinstalls
        files = [f"{name}/__init__.py"] + ([f"{name}/_ext.so"] if native else [])
        lines = [f"{f},{record_hash(self.site / f)},{(self.site / f).stat().st_size}" for f in files]
        (info / "RECORD").write_text("\n".join([*lines, f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]) + "\n")

    def write_maps(self, deleted: bool) -> None:
        """A maps file that shows fakenative/_ext.so mapped with the inode it had when first written."""
        so = self.site / "fakenative" / "_ext.so"
        if not hasattr(self, "_so_id"):
            st = os.stat(so)
            self._so_id = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
        major, minor, ino = self._so_id
        real = Path(os.path.realpath(self.site)) / "fakenative" / "_ext.so"
        suffix = " (deleted)" if deleted else ""
        self.maps.write_text(
            "55d0c0a00000-55d0c0a2c000 r--p 00000000 08:01 1311007    /usr/bin/python3\n"
            f"7f1c2b400000-7f1c2b5c0000 r-xp 00000000 {major:02x}:{minor:02x} {ino}    {real}{suffix}\n"
        )

    def load(self) -> None:
        """Put the packages into sys.modules as if imported (the .so as an extension module)."""
        import importlib
        import types

        if str(self.site) not in sys.path:
            sys.path.insert(0, str(self.site))
        importlib.invalidate_caches()
        for name in ("fakenative", "fakepure"):
            sys.modules.pop(name, None)
            importlib.import_module(name)
        ext = types.ModuleType("fakenative._ext")
        ext.__file__ = str(self.site / "fakenative" / "_ext.so")
        sys.modules["fakenative._ext"] = ext

    def unload(self) -> None:
        for name in ("fakenative", "fakenative._ext", "fakepure"):
            sys.modules.pop(name, None)
        if str(self.site) in sys.path:
            sys.path.remove(str(self.site))


def write_wheel(folder: Path, dist: str, version: str, files: dict[str, str]) -> Path:
    """A pure-Python wheel made by hand (zipfile): `files` maps paths to their text."""
    from tiny_wheels import make_wheel

    return make_wheel(folder, dist, version, files=files)


C_SOURCE = """#include <Python.h>
static PyObject *answer(PyObject *s, PyObject *a) { return PyLong_FromLong(ANSWER); }
static PyMethodDef m[] = {{"answer", answer, METH_NOARGS, ""}, {0}};
static struct PyModuleDef d = {PyModuleDef_HEAD_INIT, "_speed", 0, -1, m};
PyMODINIT_FUNC PyInit__speed(void) { return PyModule_Create(&d); }
"""


def write_c_project(folder: Path, answer: int) -> Path:
    """A setuptools project `tbkit-cdemo` (package `cdemo`, flat layout: setuptools' default
    editable mode uses a finder for it) with one C extension `cdemo._speed`."""
    pkg = folder / "cdemo"
    pkg.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "tbkit-cdemo"\nversion = "1.0"\n'
        "[tool.setuptools]\n"
        'ext-modules = [{name = "cdemo._speed", sources = ["cdemo/_speed.c"]}]\n'
        '[tool.setuptools.packages.find]\ninclude = ["cdemo*"]\n'
    )
    (pkg / "__init__.py").write_text("from cdemo._speed import answer\n")
    (pkg / "_speed.c").write_text(C_SOURCE.replace("ANSWER", str(answer)))
    return folder
