"""The child process of `tbkit run`: loads the model and runs the checks; the parent
(``cli/_supervise.py``) owns the exit code, the time limits, the output folder and stdout.

The spec (a JSON dict built by ``cli/run.py``) arrives on stdin; events go back as JSON lines on
the file descriptor named by ``$TBKIT_WORKER_EVENTS``: ``loading``, ``loaded``; per check
``started``, ``body`` (its requirements are in place) and ``finished``; then exactly one of
``done``, ``interrupted`` or ``error``. The report is written into the staging folder the parent made. The process ends with ``os._exit`` once the last
event is flushed, so a thread the model left running cannot keep it alive.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # tbkit and torch are imported in the functions that run, after the channel is set up
    from tbkit.sources.loaded import LoadedModel

EVENTS_ENV = "TBKIT_WORKER_EVENTS"
# bound before any model code runs: a model that patches os.write or json cannot cut the channel
_write, _exit, _dumps = os.write, os._exit, json.dumps


class Events:
    """JSON lines to the parent; also the runner's progress listener."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, kind: str, **fields: Any) -> None:
        from tbkit.errors import mask_credentials

        for key in ("paragraph", "trace"):  # what the parent prints: never a credential
            if key in fields:
                fields[key] = mask_credentials(fields[key])
        data = (_dumps({"event": kind, **fields}, default=str) + "\n").encode("utf-8")
        try:
            while data:
                data = data[_write(self.fd, data) :]
        except OSError:  # the parent is gone: nothing is left to report to
            _exit(1)

    def started(self, index: int, check_id: str) -> None:
        self.send("started", index=index, check=check_id, time=time.time())

    def body(self, check_id: str) -> None:
        self.send("body", check=check_id)

    def finished(self, index: int, check_id: str, statuses: list[str], seconds: float) -> None:
        self.send("finished", index=index, check=check_id, statuses=statuses, seconds=seconds)

    def close(self) -> None:
        pass


def _end(events: Events, code: int, kind: str, **fields: Any) -> None:
    events.send(kind, **fields)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # closed, replaced by None or by something odd: the event is what counts
            pass
    _exit(code)


def _watch_parent(parent: int) -> None:
    """End when the supervisor is gone (it was killed): an orphan would run on for nobody. Linux
    kills us with it (PR_SET_PDEATHSIG, even while stuck in C); elsewhere a thread polls."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before that took effect
        _exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        _exit(1)

    threading.Thread(target=watch, name="tbkit-parent-watch", daemon=True).start()


def _paragraph_of(exc: BaseException) -> str:
    from tbkit.checks import run_guard
    from tbkit.errors import TbkitError, mask_credentials, shorten

    if isinstance(exc, TbkitError):
        return str(exc)
    detail = run_guard.escape_detail(exc) or f"{type(exc).__name__}: {exc}"
    return mask_credentials(shorten(f"loading the model failed: {detail}", 1400))


def _load(spec: dict[str, Any], events: Events) -> LoadedModel:
    from tbkit.sources.coerce import as_loaded

    def say(text: str) -> None:
        print(text, flush=True)

    import torch  # noqa: F401 — tbkit's own imports are not the model's load time (a busy machine takes seconds)

    events.send("loading", time=time.time())
    lm = as_loaded(spec["source"], spec["kind"], log=say, load_options=spec["load_options"])
    events.send("loaded")
    return lm


def work(spec: dict[str, Any], events: Events) -> None:
    from tbkit.checks import run_guard, runner
    from tbkit.errors import TbkitError

    specs = runner.select_checks(spec["tiers"], spec["checks"])
    staging = spec["staging"]
    with run_guard.user_interrupts((signal.SIGINT, signal.SIGTERM)):
        try:
            lm = _load(spec, events)
            report = runner.execute(
                lm, specs, spec["device"], _path(staging), spec["seed"], spec["options"], sys.stdout,
                check_timeout=spec["check_timeout"], listener=events,
            )  # fmt: skip
        except KeyboardInterrupt:
            if run_guard.user_interrupted():
                _end(events, 130, "interrupted", reason=run_guard.interrupt_reason())
            raise
        except TbkitError as err:  # a loading error, or the environment refused a write (disk full)
            _end(events, 2, "error", paragraph=str(err), trace=traceback.format_exc(limit=-20), tbkit=True)
        except BaseException as exc:  # model code ended the load (sys.exit, its own KeyboardInterrupt), a crash
            _end(events, 2, "error", paragraph=_paragraph_of(exc), trace=traceback.format_exc(limit=-20))
    _end(events, 0, "done", verdict=report.verdict.value)


def _path(text: Optional[str]) -> Optional[Path]:
    return Path(text) if text is not None else None


def main() -> None:
    fd = int(os.environ.pop(EVENTS_ENV))
    os.set_inheritable(fd, False)  # a process the model starts must not hold the parent's pipe open
    events = Events(fd)
    spec = json.loads(sys.stdin.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # model code that asks for input gets end-of-file, never a hang
    os.close(devnull)
    _watch_parent(spec["parent"])
    # the supervisor decides when to stop: signals it passes on are handled even when this process
    # was started with them ignored (`tbkit run &` from a script ignores SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        work(spec, events)
    except BaseException as exc:
        _end(events, 1, "error", paragraph=_paragraph_of(exc), trace=traceback.format_exc(limit=-20))


if __name__ == "__main__":
    main()
