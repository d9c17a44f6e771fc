"""The gate's input checks: every bad requirement is refused with its reason before pip (or anything
else) runs. An audit hook records every process this interpreter starts, so "pip never ran" is
observed, not assumed."""

from __future__ import annotations

import sys

import pytest

from tbkit.errors import InstallRefused, TbkitError
from tbkit.guard.gate import ensure, install, plan
from tbkit.guard.gate.pip import IndexOptions
from tbkit.guard.gate.requirements import validate

# platform-independent: also run against each built wheel by the release workflow (-m quick)
pytestmark = pytest.mark.quick

_SPAWNED: list = []


def _audit(event, args):
    if event in ("subprocess.Popen", "os.posix_spawn", "os.exec", "os.system"):
        _SPAWNED.append((event, args))


sys.addaudithook(_audit)  # hooks cannot be removed; it only appends to a list


BAD = {
    "-e .": "pip option",
    "--index-url=https://evil.example/simple": "pip option",
    "six\n--index-url https://evil.example/simple": "'\\n'",
    "six\t": "'\\t'",
    "six\u200b": "'\\u200b'",  # zero-width space: looks like "six"
    "ѕix": "non-ASCII",  # Cyrillic "ѕ": a look-alike name
    " six": "leading or trailing spaces",
    "six; rm -rf ~": "`;`",
    "six && curl evil.example": "shell syntax",
    "six $(whoami)": "shell syntax",
    "six`id`": "shell syntax",
    "six|cat": "shell syntax",
    "https://example.org/six-1.17.0-py3-none-any.whl": "allow_urls=True",
    "six @ https://example.org/six-1.17.0-py3-none-any.whl": "allow_urls=True",
    "git+https://example.org/six.git": "allow_urls=True",
    "./six-1.17.0-py3-none-any.whl": "allow_paths=True",
    "/tmp/some/project": "allow_paths=True",
    "numpy (>=1)": "has no place",
    "six==": "not a valid requirement",
    "": "empty",
}


@pytest.mark.parametrize("text", list(BAD), ids=[repr(t) for t in BAD])
def test_bad_requirement_is_refused_before_any_process_starts(text):
    before = len(_SPAWNED)
    with pytest.raises(InstallRefused) as info:
        ensure(text, no_index=True)
    message = str(info.value)
    assert BAD[text] in message
    assert "\n" not in message and message.startswith("tbkit refused")
    assert len(_SPAWNED) == before, f"a process was started for a refused input: {_SPAWNED[before:]}"


@pytest.mark.parametrize("value", [123, None, b"six"])
def test_non_string_requirement_is_refused(value):
    with pytest.raises(InstallRefused, match="not a string"):
        validate(value)


def test_no_requirement_at_all_is_refused():
    with pytest.raises(InstallRefused, match="install nothing"):
        ensure()


def test_urls_and_paths_need_explicit_permission_and_paths_must_exist(tmp_path):
    url = validate("six @ https://example.org/six-1.17.0-py3-none-any.whl", allow_urls=True)
    assert (url.kind, url.name) == ("url", "six")
    assert validate("https://example.org/x-1.0-py3-none-any.whl", allow_urls=True).name is None
    with pytest.raises(InstallRefused, match="only https, http, file, git\\+https URLs"):
        validate("six @ ftp://example.org/six.whl", allow_urls=True)
    with pytest.raises(InstallRefused, match="no such file"):
        validate(str(tmp_path / "missing-1.0-py3-none-any.whl"), allow_paths=True)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InstallRefused, match="not a wheel"):
        validate(str(tmp_path / "notes.txt"), allow_paths=True)
    with pytest.raises(InstallRefused, match="not a Python project"):
        validate(str(tmp_path), allow_paths=True)
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    assert validate(str(tmp_path), allow_paths=True).kind == "path"


@pytest.mark.parametrize(
    "text,name",
    [
        ("captum>=0.9", "captum"),
        ("Optuna_Integration", "optuna-integration"),
        ("lightning[extra]>=2,<3", "lightning"),
        ("numpy!=2.0.*", "numpy"),
        ("torch==2.15.0+cu128", "torch"),
        ("six~=1.17", "six"),
    ],
)
def test_ordinary_requirements_pass_with_canonical_names(text, name):
    req = validate(text)
    assert (req.kind, req.name, req.text) == ("name", name, text)


def test_index_options_come_from_keywords_then_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TBKIT_PIP_FIND_LINKS", f"{tmp_path}/a{__import__('os').pathsep}{tmp_path}/b")
    monkeypatch.setenv("TBKIT_PIP_NO_INDEX", "1")
    monkeypatch.setenv("TBKIT_PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    env = IndexOptions.resolve()
    assert env.args() == [
        "--no-index",
        "--index-url",
        "http://127.0.0.1:9/simple",
        "--find-links",
        f"{tmp_path}/a",
        "--find-links",
        f"{tmp_path}/b",
    ]
    explicit = IndexOptions.resolve(index_url="http://127.0.0.1:8/simple", find_links=str(tmp_path))
    assert explicit.args() == ["--no-index", "--index-url", "http://127.0.0.1:8/simple", "--find-links", str(tmp_path)]
    monkeypatch.delenv("TBKIT_PIP_NO_INDEX")
    monkeypatch.delenv("TBKIT_PIP_INDEX_URL")
    monkeypatch.delenv("TBKIT_PIP_FIND_LINKS")
    assert IndexOptions.resolve().args() == []


@pytest.mark.parametrize(
    "kwargs",
    [{"index_url": "--trusted-host=evil"}, {"find_links": ["-r/etc/passwd"]}, {"index_url": "http://x\n--pre"}],
)
def test_index_option_values_that_pip_would_read_as_options_are_refused(kwargs):
    before = len(_SPAWNED)
    with pytest.raises(InstallRefused, match="refused the"):
        plan("six", **kwargs)
    assert len(_SPAWNED) == before


def test_install_is_a_plain_function_and_errors_are_tbkit_errors():
    import tbkit

    assert tbkit.install is install and callable(install)
    with pytest.raises(TbkitError):
        tbkit.install("-e .")
    with pytest.raises(TbkitError):
        tbkit.ensure("-e .")


def test_public_names_resolve_the_same_gate_in_a_fresh_interpreter():
    """`tbkit.install` and `tbkit.ensure` are plain functions of the gate, whichever is touched first,
    and `import tbkit` does not import the gate at all."""
    import subprocess

    code = (
        "import sys, tbkit\n"
        "assert 'tbkit.guard.gate' not in sys.modules\n"
        "f = tbkit.install\n"
        "import types\n"
        "assert isinstance(f, types.FunctionType)\n"
        "import tbkit.guard.gate as m\n"
        "assert m.install is f and m.ensure is tbkit.ensure and tbkit.install is f\n"
        "from tbkit.errors import InstallRefused\n"
        "for call in (tbkit.install, m.install, tbkit.ensure):\n"
        "    try:\n"
        "        call('-e .')\n"
        "    except InstallRefused:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit('not refused')\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_index_credentials_are_never_shown():
    index = IndexOptions.resolve(
        index_url="https://user:s3cr3t-token@127.0.0.1/simple",
        extra_index_url="https://__token__:pypi-AgEIcHlwaS5vcmc@127.0.0.1/x",
    )
    shown = index.describe()
    assert "s3cr3t" not in shown and "pypi-AgE" not in shown and "https://***@127.0.0.1/simple" in shown
    # pip itself still gets them, through its environment: never on its command line (`ps` shows that)
    assert not [a for a in index.args() if "s3cr3t" in a or "pypi-AgE" in a]
    assert index.env() == {
        "PIP_INDEX_URL": "https://user:s3cr3t-token@127.0.0.1/simple",
        "PIP_EXTRA_INDEX_URL": "https://__token__:pypi-AgEIcHlwaS5vcmc@127.0.0.1/x",
    }


def test_loaded_versions_are_pinned_as_pip_sees_them_installed():
    """torch reports __version__ "2.15.0+cu132" while its dist-info says "2.15.0": the pin must be the
    dist-info spelling, or pip would think the loaded torch has to change."""
    import importlib.metadata as md

    from tbkit.guard.gate.plan import pinnable

    pip_version = md.version("pip")
    pins = pinnable(
        {
            "pip": pip_version + "+cu132",
            "pytest": md.version("pytest"),
            "no-such-dist": "1.0",
            "legacy": "not a version",
        }
    )
    assert pins["pip"] == pip_version  # same release: the installed spelling
    assert pins["pytest"] == md.version("pytest")
    assert pins["no-such-dist"] == "1.0"  # not installed: kept as loaded (pip will want it: refused)
    assert "legacy" not in pins
    different = pinnable({"pip": "0.1"})
    assert different["pip"] == "0.1"  # a different release is never papered over


# pip's ARCHIVE_EXTENSIONS (pip/_internal/utils/filetypes.py): pip reads any of these as a file, any case
PIP_ARCHIVES = (".whl", ".zip", ".tar.bz2", ".tbz", ".tar.gz", ".tgz", ".tar", ".tar.xz", ".txz", ".tlz", ".tar.lz")
PIP_ARCHIVES += (".tar.lzma",)


@pytest.mark.parametrize("suffix", [s for base in PIP_ARCHIVES for s in (base, base.upper())])
@pytest.mark.parametrize("where", ["bare", "relative", "absolute"])
def test_every_archive_name_pip_reads_as_a_path_needs_allow_paths(tmp_path, monkeypatch, suffix, where):
    monkeypatch.chdir(tmp_path)
    name = f"pkg-1.0{suffix}"
    text = {"bare": name, "relative": f"./sub/{name}", "absolute": str(tmp_path / name)}[where]
    before = len(_SPAWNED)
    with pytest.raises(InstallRefused, match="allow_paths=True"):  # existing or not: refused before pip
        ensure(text, no_index=True)
    assert len(_SPAWNED) == before


def test_pip_list_of_archive_suffixes_is_the_gates():
    import json
    import subprocess

    from tbkit.guard.gate.requirements import ARCHIVE_SUFFIXES

    # Read pip's list in a child: importing pip's internals here imports the stdlib distutils, after
    # which setuptools (and so torch.utils.cpp_extension) can no longer be imported in this process.
    code = "import json; from pip._internal.utils.filetypes import ARCHIVE_EXTENSIONS as A; print(json.dumps(A))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ARCHIVE_EXTENSIONS = json.loads(proc.stdout)

    assert set(ARCHIVE_EXTENSIONS) <= set(ARCHIVE_SUFFIXES) and set(PIP_ARCHIVES) == set(ARCHIVE_SUFFIXES)


def test_a_local_tgz_in_the_working_directory_is_refused_and_nothing_is_built(tmp_path, monkeypatch):
    """tbkit.ensure("pkg-1.0.tgz") with that sdist in cwd: pip would build and install it; the gate refuses."""
    import io
    import tarfile

    import tbkit

    monkeypatch.chdir(tmp_path)
    setup = b"open('BUILT', 'w').write('x')\nfrom setuptools import setup\nsetup(name='pkg', version='1.0')\n"
    with tarfile.open(tmp_path / "pkg-1.0.tgz", "w:gz") as tar:
        info = tarfile.TarInfo("pkg-1.0/setup.py")
        info.size = len(setup)
        tar.addfile(info, io.BytesIO(setup))
    before = len(_SPAWNED)
    with pytest.raises(InstallRefused, match="installs from a local path") as err:
        tbkit.ensure("pkg-1.0.tgz", no_index=True)
    assert "allow_paths=True" in str(err.value)
    assert len(_SPAWNED) == before and sorted(p.name for p in tmp_path.iterdir()) == ["pkg-1.0.tgz"]
    assert validate("pkg-1.0.tgz", allow_paths=True).kind == "path"  # allowed only when asked for
