"""The parent of `tbkit run`: starts the work in a child process (``tbkit.cli._worker``) and owns
everything a model's code could otherwise spoil. Imports no torch.

- The exit code: 0 only when the child said ``done`` and its report is finished; a child that ends
  any other way (``os._exit(0)`` in forward, a crash, a kill) leaves an unfinished report with an
  ERROR row for the check it was in, and exit 1 (2 while it was still loading).
- The time limits: the load (import, construction, first forward) and each check. The child stops
  an interruptible check itself (an ERROR row, the run goes on); one stuck in native code is killed
  ``GRACE_S`` later and the report is closed here, marked with the reason.
- Signals: SIGINT and SIGTERM are passed on to the child, which writes its partial report marked
  interrupted; one line here, exit 130 / 143. A second signal, or no answer in time, kills it.
- The output: the report is staged in a sibling folder and swapped in only here; with --json,
  stdout carries the report JSON alone (the child's fd 1 is this process's stderr).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Optional

from tbkit.checks import report_folder
from tbkit.checks.progress import Progress
from tbkit.checks.report import salvage, summary_of
from tbkit.checks.run_guard import timeout_detail
from tbkit.cli._worker import EVENTS_ENV

GRACE_S = 10.0  # after a limit or a forwarded signal: time for the child to stop by itself
EXIT_BY_SIGNAL: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Supervisor:
    def __init__(
        self, spec: dict[str, Any], out: Path, shown_out: str, *, json_out: bool, progress: bool, debug: bool
    ) -> None:
        self.spec, self.out, self.shown_out = spec, out, shown_out
        self.staging = Path(spec["staging"])
        self.json_out, self.debug = json_out, debug
        self.info = sys.stderr if json_out else sys.stdout
        self.progress = Progress(len(spec["check_tiers"]), sys.stderr, enabled=progress)
        self.phase, self.check_started = "starting", 0.0
        self.check: Optional[str] = None
        self.load_started = 0.0
        self.final: Optional[dict[str, Any]] = None
        self.signals: list[int] = []
        self.forwarded = 0
        self.kill_at: Optional[float] = None
        self.killed_for: Optional[str] = None
        self.buffer = b""

    # ---- running ---------------------------------------------------------------------------
    def run(self) -> int:
        read_end, write_end = os.pipe()
        argv = [sys.executable, *_path_flags(), "-m", "tbkit.cli._worker"]
        env = {**os.environ, EVENTS_ENV: str(write_end)}
        previous = {s: signal.signal(s, self._on_signal) for s in EXIT_BY_SIGNAL}
        try:
            self.child = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=2 if self.json_out else None, env=env,
                pass_fds=(write_end,), start_new_session=True,
            )  # fmt: skip
            os.close(write_end)
            self._send_spec()
            self._loop(read_end)
        finally:
            os.close(read_end)
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.progress.close()
            if getattr(self, "child", None) is not None:
                with _gone():  # whatever the model started in the child's session (it may hold our stdout)
                    os.killpg(self.child.pid, signal.SIGKILL)
        return self._conclude()

    def _send_spec(self) -> None:
        assert self.child.stdin is not None
        try:
            self.child.stdin.write(json.dumps({**self.spec, "parent": os.getpid()}).encode("utf-8"))
            self.child.stdin.close()
        except BrokenPipeError:
            pass

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        self.signals.append(signum)

    def _loop(self, fd: int) -> None:
        while True:
            self._react_to_signals()
            ready, _, _ = select.select([fd], [], [], 0.25)
            if ready:
                data = os.read(fd, 65536)
                if not data:
                    break
                self._take(data)
            self._enforce_limits()
            if self.child.poll() is not None and not select.select([fd], [], [], 0)[0]:
                break
        self.child.wait()

    def _take(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self._handle(event)

    def _handle(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "loading":
            self.phase, self.load_started = "loading", time.monotonic()
        elif kind == "loaded":
            # Measuring the model's conventions runs model code before the first check starts: it
            # is under the check limit, and a probe that never returns is the conventions row's ERROR.
            self.phase, self.check, self.check_started = "checks", "conventions", time.monotonic()
        elif kind == "started":
            self.check, self.check_started = event["check"], time.monotonic()
            self.progress.started(event["index"], event["check"])
        elif kind == "body":  # the check's limit counts from here, not from its package install
            self.check_started = time.monotonic()
        elif kind == "finished":
            self.progress.finished(event["index"], event["check"], event["statuses"], event["seconds"])
            self.check = None
        elif kind in ("done", "interrupted", "error"):
            self.final = event

    def _react_to_signals(self) -> None:
        if len(self.signals) > self.forwarded and self.child.poll() is None:
            signum = self.signals[self.forwarded]
            self.forwarded += 1
            if self.forwarded > 1:  # asked twice: stop now
                self._kill("a second interrupt")
                return
            with _gone():  # to the worker's whole session, as a terminal would: pip gets it too and stops cleanly
                os.killpg(self.child.pid, signum)
            self.kill_at = time.monotonic() + GRACE_S

    def _enforce_limits(self) -> None:
        now = time.monotonic()
        load_limit, check_limit = self.spec["load_timeout"], self.spec["check_timeout"]
        if self.kill_at is not None and now > self.kill_at:
            self._kill("no answer to the interrupt")
        elif self.phase == "loading" and load_limit and now > self.load_started + load_limit + GRACE_S:
            self._kill("load time limit")
        elif self.check is not None and check_limit and now > self.check_started + check_limit + GRACE_S:
            self._kill("check time limit")

    def _kill(self, why: str) -> None:
        if self.killed_for is None and self.child.poll() is None:
            self.killed_for = why
            with _gone():
                os.killpg(self.child.pid, signal.SIGKILL)  # its own session: threads and helpers too

    # ---- concluding ------------------------------------------------------------------------
    def _conclude(self) -> int:
        final = self.final or {}
        kind = final.get("event")
        if self.signals and kind != "done":
            return self._interrupted()
        if kind == "done" and self.child.returncode == 0 and self._finished_report():
            return self._publish(0 if final["verdict"] in ("PASS", "WARN") else 1)
        if kind == "error" and (final.get("tbkit") or self.phase != "checks"):
            return self._refuse(final["paragraph"], final.get("trace", ""))
        if self.killed_for == "load time limit":
            return self._refuse(_load_timeout_paragraph(self.spec["load_timeout"]))
        return self._died(final)

    def _finished_report(self) -> bool:
        try:
            return bool(json.loads((self.staging / "report.json").read_text(encoding="utf-8"))["finished"])
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def _interrupted(self) -> int:
        signum = self.signals[0]
        reason = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name
        if self.killed_for is not None or (self.final or {}).get("event") != "interrupted":
            d = salvage(
                self.staging, f"interrupted by {reason}", self._row_for_current_check(f"interrupted by {reason}")
            )
        else:
            d = _read(self.staging / "report.json")
        if d is None:
            report_folder.discard(self.staging)
            print(f"tbkit: interrupted by {reason} while loading; nothing was written", file=sys.stderr)
        else:
            report_folder.swap_in(self.staging, self.out)
            if self.json_out:  # the partial report is still the one document on stdout
                sys.stdout.write((self.out / "report.json").read_text(encoding="utf-8").rstrip("\n") + "\n")
                sys.stdout.flush()
            print(
                f"tbkit: interrupted by {reason}; {len(d['rows'])} finished rows kept in "
                f"{os.path.join(self.shown_out, 'report.json')} (marked interrupted)",
                file=sys.stderr,
            )
        return EXIT_BY_SIGNAL.get(signum, 130)

    def _died(self, final: dict[str, Any]) -> int:
        """The child ended without finishing its report: close it here with an ERROR row."""
        if self.killed_for == "check time limit":
            limit = self.spec["check_timeout"]
            detail = (
                timeout_detail(limit)
                + " The check could not be interrupted (stuck in native code), so the run was ended."
            )
            ended, metric = f"check {self.check!r} exceeded the time limit of {limit:g} s", "time limit"
        elif final.get("event") == "error":
            detail, ended, metric = f"{final['paragraph']}\n{final.get('trace', '')}", "tbkit failed", "crashed"
        else:
            detail = _death_detail(self.child.returncode)
            ended, metric = f"the process ended inside the run ({_status(self.child.returncode)})", "process ended"
        d = salvage(self.staging, ended, self._row_for_current_check(detail, metric))
        if d is None:
            return self._refuse(
                f"the model code ended the process while loading ({_status(self.child.returncode)})",
                "Run the model code by itself to see why; a model must not call sys.exit or os._exit.",
            )
        return self._publish(1)

    def _row_for_current_check(self, detail: str, metric: str = "interrupted") -> Optional[dict[str, Any]]:
        if self.check is None:
            return None
        seconds = round(time.monotonic() - self.check_started, 4)
        tier = self.spec["check_tiers"].get(self.check, 1)  # "conventions" (measured before any check) is Tier 1
        return {"tier": tier, "check": self.check, "status": "ERROR", "metric": metric, "value": None,
                "threshold": "", "detail": detail, "seconds": seconds}  # fmt: skip

    def _publish(self, code: int) -> int:
        report_folder.swap_in(self.staging, self.out)
        json_path = self.out / "report.json"
        d = _read(json_path)
        if d is None:
            return self._refuse(f"the report at {json_path} could not be read back", "Run again.")
        if self.json_out:
            sys.stdout.write(json_path.read_text(encoding="utf-8").rstrip("\n") + "\n")
            sys.stdout.flush()
        shown = Path(self.shown_out)
        print(summary_of(d, shown / "report.html", shown / "report.json"), file=self.info, flush=True)
        return code if d["finished"] else max(code, 1)

    def _refuse(self, paragraph: str, trace: str = "") -> int:
        report_folder.discard(self.staging)  # the previous report stays as it was
        if self.debug and trace:
            print(trace.rstrip(), file=sys.stderr)
        print(f"tbkit: {paragraph}", file=sys.stderr, flush=True)
        return 2


def _read(path: Path) -> Optional[dict[str, Any]]:
    try:
        report: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))  # report.json: an object
        return report
    except (OSError, ValueError):
        return None


def _status(code: Optional[int]) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _death_detail(code: Optional[int]) -> str:
    return (
        f"the process ended inside this check ({_status(code)}) before the check finished: the model code "
        "called os._exit, or the process crashed or was killed (out of memory?). Nothing after this point ran."
    )


def _load_timeout_paragraph(limit: float) -> str:
    return (
        f"loading the model (import, construction and the first forward) did not finish within the time limit "
        f"of {limit:g} s, so it was stopped. Move work that is not defining the model out of import and "
        "__init__, or raise the limit with --import-timeout SECONDS (or TBKIT_IMPORT_TIMEOUT)."
    )


def _path_flags() -> list[str]:
    """Run the child with the parent's import path: `python -m` puts the working folder first, a
    `tbkit` console script does not (then -P keeps it out)."""
    first = sys.path[0] if sys.path else ""
    if first in ("", os.getcwd()) or sys.version_info < (3, 11):
        return []
    return ["-P"]


class _gone:
    """Signalling a process that has just exited is not an error."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> bool:
        return exc_type is not None and issubclass(exc_type, (ProcessLookupError, PermissionError))


def supervise(spec: dict[str, Any], out: Path, shown_out: str, *, json_out: bool, progress: bool, debug: bool) -> int:
    return Supervisor(spec, out, shown_out, json_out=json_out, progress=progress, debug=debug).run()
