"""`tbkit run` against hostile models, as real processes: every run ends by itself, its exit code
tells the truth, the previous report survives, nothing is written outside --out, and --json stays
parseable. Signals are sent with os.kill; every process is bounded by a timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = ROOT / "tests" / "fixtures" / "hostile"
MISBEHAVES = str(HOSTILE / "misbehaves.py")

pytestmark = pytest.mark.slow  # each test starts the real command


def tbkit_run(*args, cwd, hostile="", extra_env=None, timeout=240):
    env = {**os.environ, "HOSTILE": hostile, **(extra_env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tbkit", "run", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def report_of(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def test_a_sleeping_forward_is_an_error_row_naming_the_limit_and_the_run_goes_on(tmp_path):
    proc = tbkit_run(MISBEHAVES, "--checks", "causal,padding", "--check-timeout", "2", "--out", "rep",
                     cwd=tmp_path, hostile="sleep")  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    data = report_of(tmp_path / "rep")
    assert data["finished"] is True and data["verdict"] == "FAIL"
    limits = [r for r in data["rows"] if r["metric"] == "time limit"]
    assert {r["check"] for r in limits} == {"causal", "padding"}  # the run went on to the next check
    assert "time limit of 2 s" in limits[0]["detail"] and "--check-timeout" in limits[0]["detail"]


def test_a_check_stuck_in_native_code_is_killed_and_the_report_closed(tmp_path):
    proc = tbkit_run(MISBEHAVES, "--checks", "causal,padding", "--check-timeout", "1", "--out", "rep", "--json",
                     cwd=tmp_path, hostile="spin")  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    data = json.loads(proc.stdout)  # --json still one document
    assert data["finished"] is False and data["interrupted"] is True and "time limit" in data["ended"]
    (row,) = [r for r in data["rows"] if r["status"] == "ERROR"]
    # the model's second call is the first forward that measures its conventions, before any check
    assert row["check"] == "conventions" and "could not be interrupted" in row["detail"]
    assert report_of(tmp_path / "rep") == data


@pytest.mark.parametrize(
    "hostile, words",
    [("sys_exit0", "sys.exit(0)"), ("sys_exit3", "sys.exit(3)"), ("keyboard", "raised KeyboardInterrupt itself")],
)
def test_exits_and_interrupts_raised_by_the_model_are_error_rows_not_the_exit_code(tmp_path, hostile, words):
    proc = tbkit_run(MISBEHAVES, "--checks", "causal,padding", "--no-progress", "--out", "rep",
                     cwd=tmp_path, hostile=hostile)  # fmt: skip
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    data = report_of(tmp_path / "rep")
    assert data["finished"] is True
    errors = [r for r in data["rows"] if r["status"] == "ERROR"]
    assert {r["check"] for r in errors} == {"causal", "padding"} and words in errors[0]["detail"]


def test_os_exit_0_in_forward_never_exits_0_and_json_stays_parseable(tmp_path):
    proc = tbkit_run(MISBEHAVES, "--checks", "summary,causal", "--json", "--out", "rep", cwd=tmp_path,
                     hostile="os_exit0")  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    assert data["finished"] is False and data["verdict"] == "FAIL"
    assert data["rows"][-1]["metric"] == "process ended" and "os._exit" in data["rows"][-1]["detail"]
    assert (tmp_path / "rep" / "report.html").is_file()


def test_a_thread_left_running_does_not_keep_the_process_alive(tmp_path):
    proc = tbkit_run(str(HOSTILE / "leaves_thread.py"), "--checks", "summary", "--no-progress", "--out", "rep",
                     cwd=tmp_path, timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert report_of(tmp_path / "rep")["finished"] is True


def test_fd_level_writes_do_not_reach_json_stdout(tmp_path):
    proc = tbkit_run(MISBEHAVES, "--checks", "summary,causal", "--json", "--out", "rep", cwd=tmp_path,
                     hostile="fd_stdout")  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    assert json.loads(proc.stdout)["rows"] and "RAW BYTES ON FD 1" in proc.stderr


@pytest.mark.parametrize("hostile", ["chdir_init", "chdir"])
def test_a_model_that_changes_folder_cannot_move_the_report(tmp_path, hostile):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    proc = tbkit_run(MISBEHAVES, "--checks", "summary,causal", "--no-progress", "--out", "rep", cwd=work,
                     hostile=hostile, extra_env={"HOSTILE_DIR": str(elsewhere)})  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    assert report_of(work / "rep")["finished"] is True
    assert list(elsewhere.iterdir()) == []


def test_a_symlinked_plots_folder_is_replaced_not_followed(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    out = tmp_path / "rep"
    out.mkdir()
    (out / "plots").symlink_to(target)
    proc = tbkit_run("--checks", "summary,gradient_flow", "--no-progress", "--out", str(out), cwd=tmp_path)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    assert list(target.iterdir()) == []
    assert not (out / "plots").is_symlink() and any((out / "plots").glob("*.png"))


def test_an_empty_out_is_a_usage_error(tmp_path):
    proc = tbkit_run("--out", "", "--checks", "summary", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("tbkit: ") and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def _good_report(tmp_path: Path) -> bytes:
    proc = tbkit_run("--checks", "summary", "--no-progress", "--out", "rep", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return (tmp_path / "rep" / "report.json").read_bytes()


def test_a_failed_load_or_a_killed_supervisor_leaves_the_previous_report_whole(tmp_path):
    before = _good_report(tmp_path)
    (tmp_path / "broken.py").write_text("raise RuntimeError('broken at import')\n")
    proc = tbkit_run("broken.py", "--no-progress", "--out", "rep", cwd=tmp_path)
    assert proc.returncode == 2 and "broken at import" in proc.stderr
    assert (tmp_path / "rep" / "report.json").read_bytes() == before
    # the supervisor itself killed mid-run (SIGKILL cannot be handled): the old report is untouched
    proc = subprocess.Popen(
        [sys.executable, "-m", "tbkit", "run", MISBEHAVES, "--checks", "causal", "--out", "rep"],
        cwd=tmp_path, env={**os.environ, "HOSTILE": "sleep"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _wait_for_staging(tmp_path, "rep")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (tmp_path / "rep" / "report.json").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["plots", "report.html", "report.json"]
    deadline = time.monotonic() + 30  # the worker does not run on as an orphan
    while _workers_in(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _workers_in(tmp_path)


def _workers_in(cwd: Path) -> list:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if b"tbkit.cli._worker" in (proc / "cmdline").read_bytes() and os.readlink(proc / "cwd") == str(cwd):
                found.append(proc.name)
        except OSError:
            continue
    return found


def _wait_for_staging(cwd: Path, name: str, deadline_s: float = 120) -> Path:
    """The staging folder once the run has written its first report.json there (checks running)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for staged in cwd.glob(f".{name}.tbkit-*/report.json"):
            return staged.parent
        time.sleep(0.2)
    pytest.fail("the run never started its checks")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_end_the_run_with_a_report_marked_interrupted(tmp_path, signum, code):
    before = _good_report(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tbkit", "run", MISBEHAVES, "--checks", "summary,causal,padding", "--out", "rep"],
        cwd=tmp_path, env={**os.environ, "HOSTILE": "sleep"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        _wait_for_staging(tmp_path, "rep")
        assert (tmp_path / "rep" / "report.json").read_bytes() == before  # untouched until the swap
        time.sleep(1.0)
        os.kill(proc.pid, signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr[-2000:]
    data = report_of(tmp_path / "rep")
    assert data["interrupted"] is True and data["finished"] is False
    assert [ln for ln in stderr.splitlines() if "interrupted by" in ln] and "Traceback" not in stderr
    assert not list(tmp_path.glob(".rep.tbkit-*"))


def test_load_limit_covers_construction(tmp_path):
    proc = tbkit_run(MISBEHAVES, "--import-timeout", "1", "--no-progress", "--out", "rep", cwd=tmp_path,
                     hostile="sleep_init", timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "time limit of 1 s" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "rep").exists()


def test_load_errors_keep_exit_2_with_debug_and_add_the_traceback(tmp_path):
    (tmp_path / "broken.py").write_text("raise RuntimeError('broken at import')\n")
    proc = subprocess.run(
        [sys.executable, "-m", "tbkit", "--debug", "run", "broken.py", "--no-progress"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "broken at import" in proc.stderr


def test_a_two_megabyte_config_string_ends_quickly_with_one_paragraph(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.py").write_text(Path(MISBEHAVES).read_text())
    (folder / "config.json").write_text(json.dumps({"vocab_size": "a" * 2_000_000, "d": "http://u:p@" * 1000}))
    proc = tbkit_run(str(folder), "--no-progress", "--out", "rep", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("tbkit: ") and len(proc.stderr) < 3000 and "Traceback" not in proc.stderr


def test_a_full_disk_is_one_paragraph_and_exit_2(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (not root?)")
    try:
        (mnt / "filler").write_bytes(b"\0" * 60_000)
        proc = tbkit_run("--checks", "summary,gradient_flow", "--no-progress", "--out", str(mnt / "rep"), cwd=tmp_path)
        assert proc.returncode == 2, (proc.stdout[-1000:], proc.stderr[-2000:])
        assert "No space left on device" in proc.stderr and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("tbkit: ")
        assert not (mnt / "rep").exists()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_model_that_changes_its_weights_per_call_is_named_so_not_a_causal_leak(tmp_path):
    proc = tbkit_run(MISBEHAVES, "--checks", "causal", "--no-progress", "--out", "rep", cwd=tmp_path, hostile="drift")
    assert proc.returncode == 1, proc.stderr[-2000:]
    (row,) = report_of(tmp_path / "rep")["rows"]
    assert row["metric"] == "weights unchanged by forward" and "changes its own weights" in row["detail"]
    assert "sees the future" not in row["detail"] and "head.weight" in row["detail"]


def test_a_process_the_model_leaves_behind_does_not_hold_the_run_open(tmp_path):
    proc = tbkit_run(MISBEHAVES, "--checks", "summary,causal", "--no-progress", "--out", "rep", cwd=tmp_path,
                     hostile="spawn", timeout=180)  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    assert report_of(tmp_path / "rep")["finished"] is True


def test_out_as_the_working_folder_keeps_the_working_folder(tmp_path):
    for _ in range(2):  # the second run replaces the first one's report in place
        proc = tbkit_run("--checks", "summary", "--no-progress", "--out", ".", cwd=tmp_path, timeout=180)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert report_of(tmp_path)["finished"] is True and not list(tmp_path.parent.glob(f".{tmp_path.name}.tbkit-*"))


def test_a_file_named_plots_in_out_is_one_paragraph_and_exit_2(tmp_path):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "plots").write_text("mine")
    proc = tbkit_run("--checks", "summary", "--no-progress", "--out", str(out), cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "plots" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("tbkit: ") and (out / "plots").read_text() == "mine"


def test_a_read_only_out_is_one_paragraph_and_exit_2(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (not root?)")
    try:
        proc = tbkit_run("--checks", "summary", "--no-progress", "--out", str(mnt / "rep"), cwd=tmp_path, timeout=60)
        assert proc.returncode == 2 and proc.stderr.startswith("tbkit: ") and "Traceback" not in proc.stderr
        assert "writ" in proc.stderr  # "cannot be created … not writable"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.parametrize("hostile", ["open", "open_at_load"])
def test_a_model_that_replaces_open_cannot_break_the_report(tmp_path, hostile):
    proc = tbkit_run(MISBEHAVES, "--checks", "summary,causal,gradient_flow", "--no-progress", "--out", "rep",
                     cwd=tmp_path, hostile=hostile)  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and report_of(tmp_path / "rep")["finished"] is True
    assert any((tmp_path / "rep" / "plots").glob("*.png"))
