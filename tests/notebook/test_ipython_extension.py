"""`%load_ext tbkit` in a real IPython InteractiveShell: which cells are routed through the gate, that a
refused `!pip install` never runs in strict mode, that warn mode runs it, and that the magics work.
The full notebook scenario (a real kernel, NumPy replaced underneath) is tests/notebook/test_ipython_kernel.py."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

IPython = pytest.importorskip("IPython")

from tbkit.guard.notebook import NotebookGate  # noqa: E402  (needs IPython)


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


def test_the_transformer_leaves_cells_without_package_commands_alone():
    gate = NotebookGate(ip=None)
    plain = ["x = 1\n", "print(x)\n"]
    assert gate.transform(plain) is plain  # the fast path: no copy, no regex, no process
    mentions = ["s = 'pip install is only mentioned'\n", "!pip list | grep install\n", "!echo pip install six\n"]
    assert gate.transform(mentions) == mentions
    writefile = ["%%writefile x.sh\n", "pip install -e .\n"]
    assert gate.transform(writefile) == writefile  # not commands: a file's text


def test_a_refused_command_replaces_the_whole_cell_before_anything_runs(tmp_path):
    gate = NotebookGate(ip=None)
    cell = ["import os\n", "if True:\n", "    !pip install -e .\n", "y = 2\n"]
    out = gate.transform(cell)
    assert len(out) == 1 and ".refuse_cell(" in out[0]
    (command,) = next(iter(gate.cells.values())).commands
    assert command.action == "refuse" and "development mode" in command.reason
    for magic in ("%%bash", "%%sh", "%%shell", "%%script bash", "%%script /bin/sh"):  # %%shell: Colab's
        shell = [f"{magic}\n", "echo one\n", "pip install --target /tmp/x \\\n", "  six\n"]
        out = gate.transform(shell)
        assert len(out) == 1 and ".refuse_cell(" in out[0], magic


def test_warn_mode_keeps_the_cell_and_routes_each_command():
    gate = NotebookGate(ip=None)
    gate.mode = "warn"
    cell = [
        "x = 1\n",
        "if True:\n",
        "    !pip install -e .\n",
        "%pip install -q --target /t \\\n",
        "  six\n",
        "y = 2\n",
    ]
    out = gate.transform(cell)
    assert out[0] == "x = 1\n" and out[1] == "if True:\n" and out[-1] == "y = 2\n" and len(out) == 5
    assert out[2].startswith("    __import__('tbkit.guard.notebook', fromlist=['_']).run_command(")
    assert out[3].startswith("__import__('tbkit.guard.notebook', fromlist=['_']).run_command(")


def test_strict_mode_refuses_an_unplannable_command_and_it_never_runs(ip, tmp_path, wheelhouse, capsys):
    target = tmp_path / "target"
    marker = tmp_path / "line-1-ran"
    result = ip.run_cell(
        f"open({str(marker)!r}, 'w').write('side effect')\n"
        f"!{sys.executable} -m pip install --target {target} --no-index --find-links {wheelhouse} six\n"
        "after = 'the rest of the cell ran'"
    )
    assert not marker.exists()  # whole-cell planning: line 1 did not run either
    out = capsys.readouterr()
    assert type(result.error_in_exec).__name__ == "InstallRefused"
    assert not target.exists()  # pip never ran
    assert "after" not in ip.user_ns  # and the rest of the cell was skipped
    shown = out.out + out.err
    assert "InstallRefused: tbkit refused this cell, so nothing in it ran" in shown and "--target" in shown
    assert shown.count("--target installs into another folder") == 1  # said once
    assert "Traceback" not in shown and "\x1b" not in shown  # one paragraph, no traceback, no colour codes


def test_warn_mode_runs_the_command_after_the_warning(ip, tmp_path, wheelhouse, capfd):
    ip.run_line_magic("tbkit", "mode warn")
    target = tmp_path / "target"
    result = ip.run_cell(
        f"!{sys.executable} -m pip install -q --target {target} --no-index --find-links {wheelhouse} six"
    )
    out = capfd.readouterr()
    assert result.error_in_exec is None
    assert "tbkit (warn mode): running" in out.err and "--target" in out.err
    assert (target / "six.py").is_file()
    magic_target = tmp_path / "magic-target"
    result = ip.run_cell(f"%pip install -q --target {magic_target} --no-index --find-links {wheelhouse} six")
    assert result.error_in_exec is None and (magic_target / "six.py").is_file()


def test_magics(ip, capsys):
    from IPython.core.error import UsageError

    ip.run_line_magic("tbkit", "")
    assert "%tbkit doctor" in capsys.readouterr().out
    ip.run_line_magic("tbkit", "mode warn")
    assert "mode is warn" in capsys.readouterr().out
    with pytest.raises(UsageError, match="mode must be one of strict, warn"):
        ip.run_line_magic("tbkit", "mode sloppy")
    with pytest.raises(UsageError, match="unknown subcommand"):
        ip.run_line_magic("tbkit", "frobnicate")
    result = ip.run_cell("%tbkit install -e .")
    assert type(result.error_in_exec).__name__ == "InstallRefused"
    assert "development mode" in capsys.readouterr().out
    result = ip.run_cell("%tbkit install 'six; rm -rf ~'")
    assert type(result.error_in_exec).__name__ == "InstallRefused"
    assert "tbkit refused the requirement" in capsys.readouterr().out


def test_load_twice_keeps_one_set_of_hooks_and_unload_removes_them(ip):
    import tbkit.guard.notebook as ext

    ip.run_line_magic("load_ext", "tbkit")
    ip.run_line_magic("reload_ext", "tbkit")
    assert sum(getattr(t, "__self__", None) is ext._GATE for t in ip.input_transformers_cleanup) == 1
    hooks = [cb for cb in ip.events.callbacks["post_run_cell"] if getattr(cb, "__self__", None) is ext._GATE]
    assert len(hooks) == 1
    ip.run_line_magic("unload_ext", "tbkit")
    assert ext._GATE is None
    assert not any(isinstance(getattr(t, "__self__", None), NotebookGate) for t in ip.input_transformers_cleanup)
    assert not any(
        isinstance(getattr(cb, "__self__", None), NotebookGate) for cb in ip.events.callbacks["post_run_cell"]
    )
    assert "tbkit" not in ip.magics_manager.magics["line"] and "TbkitMagics" not in ip.magics_manager.registry
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


def test_shell_cells_and_conda_are_gated(ip, tmp_path, capsys):
    marker = tmp_path / "ran"
    for magic in ("%%bash", "%%sh", "%%script bash"):
        result = ip.run_cell(f"{magic}\necho x > {marker}\npip install --user six\n")
        assert type(result.error_in_exec).__name__ == "InstallRefused", magic
        assert not marker.exists(), magic
        assert "user site-packages" in capsys.readouterr().out
    result = ip.run_cell(f"open({str(marker)!r}, 'w').write('x')\n!conda install -y tinypkg")
    assert type(result.error_in_exec).__name__ == "InstallRefused" and not marker.exists()
    assert "cannot plan conda/mamba" in capsys.readouterr().out
    import pytest as loaded  # noqa: F401  (loaded in this process, whatever else is)

    result = ip.run_cell("!mamba install -y pytest=9")
    assert type(result.error_in_exec).__name__ == "InstallRefused"
    assert "it would change pytest" in capsys.readouterr().out


@pytest.fixture
def six_installed(wheelhouse):
    """six present in the test venv for one test, and gone again after it if it was not there before
    (a fresh venv has no six: the test must not depend on what an earlier run left)."""
    try:
        importlib.metadata.version("six")
        yield
        return
    except importlib.metadata.PackageNotFoundError:
        pass
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-index", "--find-links", str(wheelhouse), "six==1.17.0"], check=True)
    try:
        yield
    finally:
        subprocess.run([*pip, "uninstall", "-y", "six"], check=True)


def test_a_satisfied_install_in_a_shell_cell_runs_the_rest_of_the_cell(ip, tmp_path, wheelhouse, six_installed, capfd):
    marker = tmp_path / "ran"
    result = ip.run_cell(
        f"%%bash\necho before > {marker}\nPIP_NO_CACHE_DIR=1 pip install --no-index --find-links {wheelhouse} six\n"
        f"echo after >> {marker}\n"
    )
    assert result.error_in_exec is None
    assert marker.read_text().split() == ["before", "after"]
    assert "six: already satisfied" in capfd.readouterr().out


def test_leftovers_older_than_the_session_are_named_once_without_a_restart_banner(ip, capsys, monkeypatch):
    """The probe's `preexisting` findings (a crashed pip's stash from before this process: see
    tests/guard/test_probe_matrix.py for the real thing) are said once, with their removal, and lock nothing."""
    from tbkit._probe import Finding
    from tbkit.guard import integrity, notebook

    stash = Finding(
        "numpy",
        "2.0.2",
        None,
        "pip's stash /site/~umpy predates this process: rm -rf '/site/~umpy'",
        ["/site/~umpy"],
        "preexisting",
    )
    report = integrity.IntegrityReport([stash])
    assert not report.restart_required and report.preexisting_findings == [stash]
    monkeypatch.setattr(integrity, "check", lambda: report)
    gate = notebook._GATE
    gate.preexisting_shown = False
    gate.post_run_cell()
    gate.post_run_cell()
    err = capsys.readouterr().err
    assert err.count("leftovers from before this session") == 1 and "rm -rf '/site/~umpy'" in err
    assert "RESTART REQUIRED" not in err and not gate.banner_shown
