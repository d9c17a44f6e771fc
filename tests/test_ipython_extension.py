"""`%load_ext tbkit` in a real IPython InteractiveShell: which cells are routed through the gate, that a
refused `!pip install` never runs in strict mode, that warn mode runs it, and that the magics work.
The full notebook scenario (a real kernel, NumPy replaced underneath) is tests/test_ipython_kernel.py."""

from __future__ import annotations

import sys

import pytest

from tbkit.guard.notebook import CannotPlan, Extension, looks_like_install, parse_cell_command

IPython = pytest.importorskip("IPython")


@pytest.fixture(scope="module")
def shell():
    """One InteractiveShell for this file, cleared afterwards so that `get_ipython()` is None again for
    the rest of the session (other code decides "am I in a notebook?" from it)."""
    import sys as _sys

    from IPython.core.interactiveshell import InteractiveShell

    hooks = (_sys.displayhook, _sys.excepthook)
    yield InteractiveShell.instance()
    InteractiveShell.clear_instance()
    _sys.displayhook, _sys.excepthook = hooks


@pytest.fixture
def ip(shell):
    shell.run_line_magic("load_ext", "tbkit")
    yield shell
    shell.run_line_magic("unload_ext", "tbkit")


PARSED = [
    ("!", "pip install six", ["six"], {}),
    ("!", "pip3 install -q six==1.17.0", ["six==1.17.0"], {"quiet": True}),
    ("!", "pip -q install six", ["six"], {}),
    ("!", "python -m pip install -U six", ["six"], {"upgrade": True}),
    ("!", "/usr/bin/python3.11 -m pip install 'captum>=0.9'", ["captum>=0.9"], {}),
    ("!", "{sys.executable} -m pip install six", ["six"], {}),
    ("!", "uv pip install six --pre", ["six"], {"pre": True}),
    (
        "%",
        "pip install --no-index --find-links /w --find-links=/v six",
        ["six"],
        {"no_index": True, "find_links": ["/w", "/v"]},
    ),
    (
        "%",
        "pip install -i http://127.0.0.1:1/simple --no-deps six",
        ["six"],
        {"index_url": "http://127.0.0.1:1/simple", "no_deps": True},
    ),
]


@pytest.mark.parametrize("escape,cmd,reqs,opts", PARSED, ids=[f"{e}{c}" for e, c, _, _ in PARSED])
def test_install_commands_are_recognised_and_parsed(escape, cmd, reqs, opts):
    assert looks_like_install(escape, cmd)
    parsed = parse_cell_command(escape, cmd)
    assert parsed.requirements == reqs and parsed.options == opts


@pytest.mark.parametrize(
    "escape,cmd",
    [
        ("!", "pip uninstall -y six"),
        ("!", "pip download six"),
        ("!", "ls install"),
        ("%", "time install()"),
        ("!", "echo pip install six"),
    ],
)
def test_other_commands_are_not_routed(escape, cmd):
    assert not looks_like_install(escape, cmd)


def test_a_pip_command_that_only_mentions_install_runs_as_is():
    assert looks_like_install("!", "pip list | grep install")
    assert parse_cell_command("!", "pip list | grep install") is None


@pytest.mark.parametrize(
    "cmd,reason",
    [
        ("pip install six && echo done", "shell syntax"),
        ("pip install six > log.txt", "shell syntax"),
        ("pip install $PKG", "shell syntax"),
        ("pip install {pkg}", "shell syntax"),
        ("pip install -r requirements.txt", "option -r"),
        ("pip install -e .", "option -e"),
        ("pip install --target /tmp/x six", "option --target"),
        ("pip install --force-reinstall numpy", "option --force-reinstall"),
        ("pip install 'six", "quoting"),
        ("pip install -q", "no package"),
    ],
)
def test_unplannable_install_commands_are_named_with_the_reason(cmd, reason):
    with pytest.raises(CannotPlan, match=reason):
        parse_cell_command("!", cmd)


def test_the_transformer_rewrites_only_install_lines_and_keeps_indentation():
    ext = Extension(ip=None)
    plain = ["x = 1\n", "print(x)\n"]
    assert ext.transform(plain) is plain  # the fast path: no copy, no regex
    cell = [
        "import numpy\n",
        "if True:\n",
        "    !pip install six\n",
        "%pip install -q six \\\n",
        "  tinypkg\n",
        "y = 2\n",
    ]
    out = ext.transform(cell)
    assert out[0] == "import numpy\n" and out[1] == "if True:\n" and out[-1] == "y = 2\n"
    assert (
        out[2] == "    __import__('tbkit.guard.notebook', fromlist=['_']).gate_cell_command('!', 'pip install six')\n"
    )
    assert (
        out[3]
        == "__import__('tbkit.guard.notebook', fromlist=['_']).gate_cell_command('%', 'pip install -q six    tinypkg')\n"
    )
    assert len(out) == 5
    bash = ["%%bash\n", "pip install six\n", "!pip install six\n"]
    assert ext.transform(bash) == bash  # not Python: left alone
    captured = ext.transform(["%%capture\n", "!pip install six\n"])
    assert "gate_cell_command" in captured[1]


def test_strict_mode_refuses_an_unplannable_command_and_it_never_runs(ip, tmp_path, wheelhouse, capsys):
    target = tmp_path / "target"
    result = ip.run_cell(
        f"!{sys.executable} -m pip install --target {target} --no-index --find-links {wheelhouse} six\n"
        "after = 'the rest of the cell ran'"
    )
    out = capsys.readouterr()
    assert type(result.error_in_exec).__name__ == "InstallRefused"
    assert not target.exists()  # pip never ran
    assert "after" not in ip.user_ns  # and the rest of the cell was skipped
    shown = out.out + out.err
    assert "InstallRefused: tbkit refused the cell command" in shown and "--target" in shown
    assert "Traceback" not in shown  # one paragraph, no traceback


def test_warn_mode_runs_the_command_after_the_warning(ip, tmp_path, wheelhouse, capfd):
    ip.run_line_magic("tbkit", "mode warn")
    target = tmp_path / "target"
    result = ip.run_cell(
        f"!{sys.executable} -m pip install -q --target {target} --no-index --find-links {wheelhouse} six"
    )
    out = capfd.readouterr()
    assert result.error_in_exec is None
    assert "tbkit (warn mode): running" in out.err
    assert (target / "six.py").is_file()
    magic_target = tmp_path / "magic-target"
    result = ip.run_cell(f"%pip install -q --target {magic_target} --no-index --find-links {wheelhouse} six")
    assert result.error_in_exec is None and (magic_target / "six.py").is_file()


def test_magics(ip, capsys):
    ip.run_line_magic("tbkit", "")
    assert "%tbkit doctor" in capsys.readouterr().out
    ip.run_line_magic("tbkit", "mode warn")
    assert "mode is warn" in capsys.readouterr().out
    ip.run_line_magic("tbkit", "mode sloppy")
    assert "mode must be one of strict, warn" in capsys.readouterr().err
    result = ip.run_cell("%tbkit install -e .")
    assert "not one the gate can plan" in capsys.readouterr().err and result.error_in_exec is None
    result = ip.run_cell("%tbkit install 'six; rm -rf ~'")
    assert type(result.error_in_exec).__name__ == "InstallRefused"
    assert "InstallRefused: tbkit refused the requirement" in capsys.readouterr().out


def test_load_twice_keeps_one_set_of_hooks_and_unload_removes_them(ip):
    import tbkit.guard.notebook as ext

    ip.run_line_magic("load_ext", "tbkit")
    ip.run_line_magic("reload_ext", "tbkit")
    assert sum(getattr(t, "__self__", None) is ext._EXTENSION for t in ip.input_transformers_cleanup) == 1
    hooks = [cb for cb in ip.events.callbacks["post_run_cell"] if getattr(cb, "__self__", None) is ext._EXTENSION]
    assert len(hooks) == 1
    ip.run_line_magic("unload_ext", "tbkit")
    assert ext._EXTENSION is None
    assert not any(isinstance(getattr(t, "__self__", None), Extension) for t in ip.input_transformers_cleanup)
    assert "tbkit" not in ip.magics_manager.magics["line"]
    ip.run_line_magic("load_ext", "tbkit")  # the fixture unloads it


def test_magic_dry_run_shows_the_refused_plan_and_changes_nothing(ip, wheelhouse, capsys):
    import importlib.metadata as md

    import numpy

    loaded = numpy.__version__
    other = "2.2.6" if loaded != "2.2.6" else "2.0.2"
    result = ip.run_cell(f"%tbkit install --dry-run --no-index --find-links {wheelhouse} numpy=={other}")
    out = capsys.readouterr().out
    assert result.error_in_exec is None
    assert f"~ numpy {loaded} -> {other}" in out and f"LOADED in this process as {loaded}" in out
    assert "REFUSED" in out
    assert md.version("numpy") == loaded
