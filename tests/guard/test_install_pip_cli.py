"""pip command lines read as pip reads them: the shell line is split by tbkit, the pip arguments by pip's own
parser (in a child interpreter, one for the whole table), and every option is planned, passed on, or refused
with its reason — never "unknown". No package is installed here: parsing and judging only."""

from __future__ import annotations

import sys

import pytest

from tbkit.guard.gate import pip_cli
from tbkit.guard.gate.pip_cli import PASSED_ON, PLANNED, REFUSED, CannotPlan

pytestmark = pytest.mark.quick

# (command line as typed after `!`, expected) — expected is a dict of InstallRequest fields to compare, or
# ("refused", words the reason must contain).
TABLE = [
    ("pip install six", {"requirements": ["six"], "options": {}}),
    ("pip install -qU six", {"requirements": ["six"], "options": {"quiet": True, "upgrade": True}}),
    ("pip install -Uq six", {"requirements": ["six"], "options": {"quiet": True, "upgrade": True}}),
    ("pip install --quiet --upgrade six", {"options": {"quiet": True, "upgrade": True}}),
    ("pip install -qqq six", {"options": {"quiet": True}}),
    ("pip -q install six", {"requirements": ["six"], "options": {"quiet": True}}),
    ("pip3 install six==1.17.0", {"requirements": ["six==1.17.0"]}),
    ("pip3.11 install 'captum>=0.9'", {"requirements": ["captum>=0.9"]}),
    ("python -m pip install -U six", {"options": {"upgrade": True}}),
    ("/usr/bin/python3.11 -m pip install six", {"requirements": ["six"]}),
    ("{sys.executable} -m pip install six", {"requirements": ["six"]}),
    ("uv pip install --system six", {"requirements": ["six"], "pip_args": []}),
    ("pip install --pre six", {"options": {"pre": True}}),
    ("pip install --no-deps six", {"options": {"no_deps": True}}),
    ("pip install --upgrade-strategy eager -U six", {"options": {"upgrade_strategy": "eager", "upgrade": True}}),
    ("pip install --upgrade-strategy=only-if-needed six", {"options": {"upgrade_strategy": "only-if-needed"}}),
    ("pip install --index-url=http://127.0.0.1:1/simple six", {"options": {"index_url": "http://127.0.0.1:1/simple"}}),
    ("pip install -i http://127.0.0.1:1/simple six", {"options": {"index_url": "http://127.0.0.1:1/simple"}}),
    (
        "pip install --extra-index-url http://127.0.0.1:2/simple six",
        {"options": {"extra_index_url": ["http://127.0.0.1:2/simple"]}},
    ),
    ("pip install --no-index -f /w --find-links=/v six", {"options": {"no_index": True, "find_links": ["/w", "/v"]}}),
    ("pip install --upgr six", ("refused", "ambiguous option: --upgr")),
    ("pip install --upgrade-s eager six", {"options": {"upgrade_strategy": "eager"}}),  # pip's own abbreviation
    ("pip install --no-cache-dir six", {"pip_args": ["--no-cache-dir"]}),
    ("pip install --no-warn-script-location -q six", {"pip_args": ["--no-warn-script-location"]}),
    ("pip install --progress-bar off six", {"pip_args": ["--progress-bar", "off"]}),
    ("pip install --only-binary :all: six", {"pip_args": ["--only-binary", ":all:"]}),
    ("pip install --prefer-binary six", {"pip_args": ["--prefer-binary"]}),
    ("pip install --force-reinstall six", {"pip_args": ["--force-reinstall"]}),
    ("pip install --trusted-host 127.0.0.1 six", {"pip_args": ["--trusted-host", "127.0.0.1"]}),
    ("pip install --no-user six", {"pip_args": ["--no-user"]}),
    ("pip install --break-system-packages six", {"pip_args": ["--break-system-packages"]}),
    ("pip install --dry-run six", {"dry_run": True}),
    ("PIP_NO_CACHE_DIR=1 pip install six", {"requirements": ["six"], "env": {"PIP_NO_CACHE_DIR": "1"}}),
    ("PIP_UPGRADE=1 pip install six", {"options": {"upgrade": True}, "env": {"PIP_UPGRADE": "1"}}),
    ("env PIP_QUIET=1 pip install six", {"options": {"quiet": True}}),
    ("pip install -r req.txt", {"requirements": ["six>=1", "packaging"], "constraints": ["numpy<3"]}),
    ("pip install -r cons-only.txt -c cons.txt six", {"requirements": ["six"], "constraints": ["numpy<3", "numpy<3"]}),
    ("pip install -r idx.txt", {"requirements": ["six"], "options": {"extra_index_url": ["http://127.0.0.1:3/s"]}}),
    ("pip install -r markers.txt", {"requirements": ["six>=1", "packaging"]}),
    ("pip install -r editable.txt", ("refused", "editable.txt line 1 is `-e ./proj`")),
    ("pip install -r hashed.txt", ("refused", "--hash")),
    ("pip install -r missing.txt", ("refused", "missing.txt")),
    ("pip install -e .", ("refused", "development mode")),
    ("pip install --target /tmp/x six", ("refused", "--target installs into another folder")),
    ("pip install --user six", ("refused", "user site-packages")),
    ("pip install --root /r six", ("refused", "--root")),
    ("pip install --prefix /p six", ("refused", "--prefix")),
    ("pip install --platform manylinux2014_x86_64 six", ("refused", "another platform")),
    ("pip install --require-hashes six", ("refused", "hash-checking")),
    ("pip install --report r.json six", ("refused", "--report")),
    ("pip install --python /usr/bin/python3 six", ("refused", "another interpreter")),
    ("PIP_TARGET=/tmp/t pip install six", ("refused", "PIP_*")),
    ("pip install --bogus six", ("refused", "no such option: --bogus")),
    ("pip install -q", ("refused", "no package was named")),
    ("uv pip install --python-platform linux six", ("refused", "no such option")),
]


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """Every line of TABLE parsed by pip's parser in one child interpreter, from a folder with the files."""
    d = tmp_path_factory.mktemp("reqs")
    (d / "req.txt").write_text("six>=1\n-c cons.txt\n-r nested.txt\n")
    (d / "cons.txt").write_text("numpy<3\n")
    (d / "nested.txt").write_text("# nested\npackaging\n")
    (d / "cons-only.txt").write_text("-c cons.txt\n")
    (d / "idx.txt").write_text("--extra-index-url http://127.0.0.1:3/s\nsix\n")
    (d / "editable.txt").write_text("-e ./proj\n")
    (d / "markers.txt").write_text('six>=1; python_version >= "3"\nnever; python_version < "3"\npackaging\n')
    (d / "hashed.txt").write_text("six==1.17.0 --hash=sha256:" + "0" * 64 + "\n")
    cmds = [pip_cli.shell_command(line) for line, _ in TABLE]
    parsed = pip_cli.parse_pip([(pip_cli.pip_argv(c), c.env) for c in cmds], cwd=str(d))
    out = {}
    for (line, _), cmd, result in zip(TABLE, cmds, parsed):
        try:
            out[line] = pip_cli.install_request(cmd, result)
        except CannotPlan as err:
            out[line] = err
    return out


def test_the_table_is_large_enough():
    assert len(TABLE) >= 40


@pytest.mark.parametrize("line,expected", TABLE, ids=[line for line, _ in TABLE])
def test_pip_command_line_is_planned_or_refused_with_the_reason(judged, line, expected):
    got = judged[line]
    if isinstance(expected, tuple):
        assert isinstance(got, CannotPlan), f"{line!r} was planned: {got}"
        assert expected[1] in str(got)
        assert "unknown" not in str(got) and "\x1b" not in str(got)
        return
    assert not isinstance(got, CannotPlan), f"{line!r} was refused: {got}"
    for key, value in expected.items():
        assert getattr(got, key) == value, (line, key, getattr(got, key))


_LIST_DESTS = (
    "import json, pip\nfrom pip._internal.commands import create_command\n"
    "p = create_command('install').parser\n"
    "print(json.dumps([pip.__version__, sorted({o.dest for o in p._get_all_options() if o.dest})]))\n"
)


def _pips(tmp_path):
    """This interpreter's pip, and each pip wheel of the test wheelhouse (unpacked; a wheel is importable)."""
    import zipfile

    import wheelhouse as wh

    yield None
    for wheel in sorted(wh.WHEELHOUSE.glob("pip-*.whl")):
        target = tmp_path / wheel.stem
        zipfile.ZipFile(wheel).extractall(target)
        yield target


def test_every_option_of_each_pip_has_a_rule(tmp_path):
    """A pip upgrade that adds an install option fails here until the option is planned, passed on or refused."""
    import json
    import os
    import subprocess

    seen = []
    for path in _pips(tmp_path):
        env = {**os.environ, "PYTHONPATH": str(path)} if path else dict(os.environ)
        proc = subprocess.run([sys.executable, "-c", _LIST_DESTS], capture_output=True, text=True, env=env)
        version, dests = json.loads(proc.stdout)
        unruled = [d for d in dests if d not in PLANNED and d not in PASSED_ON and d not in REFUSED]
        assert unruled == [], f"pip {version} install options without a rule: {unruled}"
        seen.append(version)
    assert len(seen) >= 1, seen


@pytest.mark.parametrize(
    "line,launcher,changes",
    [
        ("pip install six", "pip", True),
        ("pip uninstall -y six", "pip", True),
        ("pip list | grep install", "pip", False),
        ("pip download six", "pip", False),
        ("echo pip install six", None, False),
        ("ls install", None, False),
        ("conda install -y numpy", "conda", True),
        ("mamba install numpy", "conda", True),
        ("micromamba remove numpy", "conda", True),
        ("conda list", "conda", False),
        ("FOO=1 BAR=2 uv pip install six", "uv", True),
    ],
)
def test_shell_lines_are_recognised(line, launcher, changes):
    cmd = pip_cli.shell_command(line)
    assert cmd.launcher == launcher and pip_cli.changes_packages(cmd) is changes


@pytest.mark.parametrize(
    "line",
    ["pip install six && echo done", "pip install six > log.txt", "pip install $PKG", "pip install {pkg}"],
)
def test_shell_syntax_is_noticed(line):
    assert pip_cli.shell_command(line).shell_syntax


def test_unreadable_quoting_is_a_reason():
    with pytest.raises(CannotPlan, match="quoting"):
        pip_cli.shell_command("pip install 'six")


def test_uninstall_names_include_requirement_files(tmp_path):
    (tmp_path / "r.txt").write_text("numpy\n")
    cmd = pip_cli.shell_command("pip uninstall -y six -r r.txt")
    (parsed,) = pip_cli.parse_pip([(pip_cli.pip_argv(cmd), {})], cwd=str(tmp_path))
    assert parsed.command == "uninstall" and pip_cli.uninstall_names(parsed) == ["six", "numpy"]


def test_the_parse_does_not_import_pip_here():
    import subprocess

    code = (
        "import sys\nfrom tbkit.guard.gate import pip_cli\n"
        "c = pip_cli.shell_command('pip install -qU six')\n"
        "(p,) = pip_cli.parse_pip([(pip_cli.pip_argv(c), {})])\n"
        "assert pip_cli.install_request(c, p).options == {'quiet': True, 'upgrade': True}\n"
        "print(sorted(m for m in sys.modules if m == 'pip' or m.startswith('pip.')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr


def test_a_command_without_options_needs_no_child_process():
    spawned = []
    sys.addaudithook(lambda ev, args: spawned.append(ev) if ev == "subprocess.Popen" else None)
    cmd = pip_cli.shell_command("pip install six 'numpy>=2'")
    (parsed,) = pip_cli.parse_pip([(pip_cli.pip_argv(cmd), cmd.env)])
    assert pip_cli.install_request(cmd, parsed).requirements == ["six", "numpy>=2"] and spawned == []
    pip_cli.parse_pip([(["install", "-q", "six"], {})])
    assert spawned == ["subprocess.Popen"]  # an option: pip's parser reads it
